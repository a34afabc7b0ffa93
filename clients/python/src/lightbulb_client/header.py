"""Stamping the routing key onto outgoing requests: the ``x-routing-key`` header on an
HTTP request, or gRPC metadata for a call sent through the router."""

from __future__ import annotations

from typing import MutableMapping, Tuple

from .resolved import Resolved

#: The default routing header, ``x-routing-key``, that the router reads.
ROUTING_KEY = "x-routing-key"


def stamp(
    resolved: Resolved, headers: MutableMapping[str, str], name: str = ROUTING_KEY
) -> MutableMapping[str, str]:
    """Sets header ``name`` (default ``x-routing-key``) in ``headers`` to the answer's
    routing key, replacing any value under any capitalisation of the name, and returns
    ``headers``.

    >>> stamp(resolved, {"X-Routing-Key": "stale"})   # doctest: +SKIP
    {'x-routing-key': 'ranker-v2'}
    """
    lowered = name.lower()
    for existing in [key for key in headers if key.lower() == lowered]:
        del headers[existing]
    headers[lowered] = resolved.routing_key
    return headers


def grpc_metadata(resolved: Resolved, name: str = ROUTING_KEY) -> Tuple[Tuple[str, str], ...]:
    """The routing key as gRPC metadata, to pass as ``metadata=`` to a call sent through
    the router: ``(("x-routing-key", key),)``."""
    return ((name.lower(), resolved.routing_key),)
