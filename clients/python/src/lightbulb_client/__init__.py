"""The Python client of Lightbulb: asks "which model serves this request?", caches the
answer, and keeps answering when Lightbulb is down.

A client service resolves its request context (objective, tenant, subject, attributes,
explicit experiment allocations, traffic class) to a routing key and an
:class:`ObjectiveConfig`, sends the routing key to the router as ``x-routing-key``, and
puts the config in its own request body::

    from lightbulb_client import Client

    client = Client("http://127.0.0.1:50051")
    resolved = client.resolve("ContinueWatchingRanking", subject_id="member-42",
                              attributes={"country": "CA"})
    headers = client.stamp(resolved, {"content-type": "application/json"})
    # POST to the router with `headers`; resolved.config.model_id etc. go in the body.

The behaviour follows the Rust client (``lightbulb/client``): the same cache rule (the
server's ``cache_ttl_ms`` capped by ``max_ttl``, 0 = not cached), the same fallbacks
(last known good, then a static default, never over a rejection), the same retry,
backoff and failover between endpoints within one deadline. See the README for what
differs.

The gRPC stubs are generated from ``proto/lightbulb/v1/lightbulb.proto`` when the package
is built; :data:`proto` and :data:`proto_grpc` are those modules.
"""

from ._generated import pb as proto
from ._generated import pb_grpc as proto_grpc
from .cache import BoundedCache
from .client import (
    DEFAULT_ATTEMPTS,
    DEFAULT_BACKOFF,
    DEFAULT_CACHE_CAPACITY,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_DEADLINE,
    DEFAULT_LAST_KNOWN_GOOD_CAPACITY,
    DEFAULT_MAX_TTL,
    DEFAULT_RECONNECT_BACKOFF_MAX,
    Client,
)
from .context import RequestContext, TrafficClass
from .errors import (
    ConfigError,
    InvalidResponseError,
    LightbulbError,
    RejectedError,
    UnavailableError,
    is_retryable,
)
from .header import ROUTING_KEY, grpc_metadata, stamp
from .resolved import ExperimentCell, ObjectiveConfig, Resolved, ShadowTarget, Source
from .stats import Stats

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_ATTEMPTS",
    "DEFAULT_BACKOFF",
    "DEFAULT_CACHE_CAPACITY",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_DEADLINE",
    "DEFAULT_LAST_KNOWN_GOOD_CAPACITY",
    "DEFAULT_MAX_TTL",
    "DEFAULT_RECONNECT_BACKOFF_MAX",
    "ROUTING_KEY",
    "BoundedCache",
    "Client",
    "ConfigError",
    "ExperimentCell",
    "InvalidResponseError",
    "LightbulbError",
    "ObjectiveConfig",
    "RejectedError",
    "RequestContext",
    "Resolved",
    "ShadowTarget",
    "Source",
    "Stats",
    "TrafficClass",
    "UnavailableError",
    "grpc_metadata",
    "is_retryable",
    "proto",
    "proto_grpc",
    "stamp",
]
