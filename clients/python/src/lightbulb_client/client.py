"""The :class:`Client`: the cache, the last-known-good map, the static defaults, and the
RPC with retries, backoff and failover between endpoints.

How one resolution is answered (the same order as the Rust client)::

    resolve(ctx)
      1. fresh cache hit (same context, within the TTL Lightbulb gave)  -> Source.CACHED (no RPC)
      2. Resolver.Resolve on Lightbulb (concurrent misses of one context
         share one RPC), retries + backoff + failover between endpoints,
         all within the deadline                                         -> Source.FRESH
            (cached for min(server TTL, max_ttl), kept as last known good)
         NOT_FOUND / INVALID_ARGUMENT / ... (a real answer)              -> RejectedError
      3. Lightbulb unavailable: last known good answer for the context  -> Source.LAST_KNOWN_GOOD
      4. else the objective's static default                            -> Source.STATIC_DEFAULT
      5. else                                                           -> UnavailableError
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import grpc

from ._generated import pb, pb_grpc
from .cache import BoundedCache
from .context import RequestContext, TrafficClass, TrafficClassLike
from .errors import (
    ConfigError,
    InvalidResponseError,
    RejectedError,
    UnavailableError,
    is_retryable,
)
from .header import ROUTING_KEY, grpc_metadata, stamp
from .resolved import Answer, ObjectiveConfig, Resolved, ShadowTarget, Source, is_valid_routing_key
from .stats import Stats

_log = logging.getLogger("lightbulb_client")

#: Default ``cache_capacity``: fresh answers cached.
DEFAULT_CACHE_CAPACITY = 10_000
#: Default ``last_known_good_capacity``: fallback answers kept.
DEFAULT_LAST_KNOWN_GOOD_CAPACITY = 10_000
#: Default ``max_ttl``, seconds: cap on the server's TTL.
DEFAULT_MAX_TTL = 300.0
#: Default ``deadline``, seconds: budget of one miss, retries included.
DEFAULT_DEADLINE = 0.5
#: Default ``connect_timeout``, seconds.
DEFAULT_CONNECT_TIMEOUT = 0.25
#: Default ``attempts``: RPC attempts per miss.
DEFAULT_ATTEMPTS = 3
#: Default ``backoff``, seconds: (base, max) of the exponential backoff between attempts.
DEFAULT_BACKOFF = (0.02, 0.2)
#: Default ``reconnect_backoff_max``, seconds: the longest wait of grpcio between
#: reconnection attempts to an endpoint that is down.
DEFAULT_RECONNECT_BACKOFF_MAX = 1.0

StubFactory = Callable[[str], Any]


@dataclass(frozen=True)
class _Failure:
    """Why a miss produced no answer; shared by every caller of one flight."""

    kind: str  # "rejected", "exhausted" or "invalid"
    code: Optional[grpc.StatusCode] = None
    message: str = ""
    attempts: int = 0


_Outcome = Union[Answer, _Failure]


class _Flight:
    """One miss's RPC, shared by every caller that misses the same context meanwhile."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._outcome: Optional[_Outcome] = None

    def finish(self, outcome: _Outcome) -> None:
        self._outcome = outcome
        self._done.set()

    def wait(self, timeout: float) -> Optional[_Outcome]:
        if not self._done.wait(timeout):
            return None
        return self._outcome


def _channel_target(endpoint: str) -> str:
    """The grpcio target of an endpoint: ``http://host:port`` (as the Rust client takes)
    becomes ``host:port``; any other gRPC target (``host:port``, ``dns:///host:port``,
    ``unix:/path``) is used as it is."""
    if not isinstance(endpoint, str) or not endpoint.strip():
        raise ConfigError(f"invalid lightbulb endpoint {endpoint!r}")
    if endpoint.startswith("https://"):
        raise ConfigError(
            f"invalid lightbulb endpoint {endpoint!r}: TLS is not supported, use http://HOST:PORT"
        )
    if endpoint.startswith("http://"):
        authority = endpoint[len("http://") :].rstrip("/")
        if not authority or "/" in authority or ":" not in authority:
            raise ConfigError(f"invalid lightbulb endpoint {endpoint!r}: expected http://HOST:PORT")
        return authority
    if "://" in endpoint and not endpoint.startswith(("dns:", "ipv4:", "ipv6:", "unix:")):
        raise ConfigError(f"invalid lightbulb endpoint {endpoint!r}: unsupported scheme")
    return endpoint


class Client:
    """A Lightbulb client: resolves request contexts with a local cache, falls back to the
    last known good answer (then to a static default) when Lightbulb is unreachable.

    Thread-safe; make one per process and share it. Connections are made lazily, on the
    first cache miss, so a client is made while Lightbulb is down (resolutions then use
    the static defaults). Close it with :meth:`close` (or use it as a context manager).

    Args:
        target: the Lightbulb replica(s): ``http://host:port`` or a grpcio target
            (``host:port``, ``dns:///host:port``), one or a sequence. The client starts
            on a random one and stays on it until an RPC fails with a retryable status;
            the retry then goes to the next one in order (failover).
        cache_capacity: fresh answers cached, one per distinct context (default 10,000;
            0 disables the cache).
        last_known_good_capacity: fallback answers kept (default 10,000; they never
            expire, the least recently used are evicted past this size; 0 disables the
            fallback to last known good answers).
        max_ttl: cap on the TTL Lightbulb returns, in seconds (default 300; 0 disables the
            cache).
        deadline: time budget of one resolution that misses the cache, retries and
            backoff included, in seconds (default 0.5); each attempt's gRPC timeout is
            what is left of it. When it runs out, the fallbacks apply.
        connect_timeout: the least time a connection attempt is given, in seconds (default
            0.25; grpcio's ``grpc.min_reconnect_backoff_ms``). A call never waits longer
            than what is left of the deadline.
        attempts: RPC attempts per resolution, first try included (default 3; 0 is taken
            as 1).
        backoff: ``(base, max)`` of the exponential backoff between attempts, in seconds
            (default 0.02 and 0.2): the n-th wait (n from 0) is ``min(max, base * 2**n)``,
            uniform over its upper half. A retry to an endpoint not yet tried in this
            resolution does not wait; a wait that would end past the deadline is not
            started (the resolution falls back at once).
        routing_header: the header :meth:`stamp` sets (default ``x-routing-key``).
        static_defaults: objective → ``(routing_key, ObjectiveConfig)``, the answer when
            Lightbulb is unavailable and never answered the context. Never used to hide an
            answer or a rejection. Default none.
        reconnect_backoff_max: the longest wait between grpcio's reconnection attempts to
            an endpoint that is down, in seconds (default 1), so that a client notices a
            Lightbulb that is back within about that long.
        channel_options: extra grpcio channel options, appended to the client's own.
        clock: monotonic clock in seconds (default :func:`time.monotonic`); tests inject a
            fake one to drive TTLs.
        sleep: how backoff waits (default :func:`time.sleep`); tests inject a fake one.
        stub_factory: makes the ``Resolver`` stub of one endpoint (default: a
            ``ResolverStub`` on an insecure grpcio channel); tests inject fakes. It is
            given the grpcio target.

    Raises:
        ConfigError: no endpoint, an invalid endpoint, a non-positive deadline, a negative
            setting, or a static default whose routing key is not a valid header value.
    """

    def __init__(
        self,
        target: Union[str, Sequence[str]],
        *,
        cache_capacity: int = DEFAULT_CACHE_CAPACITY,
        last_known_good_capacity: int = DEFAULT_LAST_KNOWN_GOOD_CAPACITY,
        max_ttl: float = DEFAULT_MAX_TTL,
        deadline: float = DEFAULT_DEADLINE,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        attempts: int = DEFAULT_ATTEMPTS,
        backoff: Tuple[float, float] = DEFAULT_BACKOFF,
        routing_header: str = ROUTING_KEY,
        static_defaults: Optional[Mapping[str, Tuple[str, ObjectiveConfig]]] = None,
        reconnect_backoff_max: float = DEFAULT_RECONNECT_BACKOFF_MAX,
        channel_options: Sequence[Tuple[str, Any]] = (),
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        stub_factory: Optional[StubFactory] = None,
    ) -> None:
        endpoints = [target] if isinstance(target, str) else list(target)
        if not endpoints:
            raise ConfigError("no lightbulb endpoint given")
        targets = [_channel_target(endpoint) for endpoint in endpoints]
        if not deadline > 0:
            raise ConfigError(f"request deadline must be positive, got {deadline!r}")
        for name, value in (
            ("cache_capacity", cache_capacity),
            ("last_known_good_capacity", last_known_good_capacity),
            ("max_ttl", max_ttl),
            ("connect_timeout", connect_timeout),
            ("backoff base", backoff[0]),
            ("backoff max", backoff[1]),
            ("reconnect_backoff_max", reconnect_backoff_max),
        ):
            if value < 0:
                raise ConfigError(f"{name} must not be negative, got {value!r}")
        defaults: Dict[str, Answer] = {}
        for objective, (routing_key, config) in (static_defaults or {}).items():
            if not isinstance(routing_key, str) or not is_valid_routing_key(routing_key):
                raise ConfigError(
                    f"invalid routing key {routing_key!r} in the static default of "
                    f"objective {objective!r}"
                )
            defaults[objective] = Answer(routing_key, config, (), 0)

        self._endpoints: List[str] = list(endpoints)
        self._channels: List[grpc.Channel] = []
        if stub_factory is None:
            options = [
                ("grpc.min_reconnect_backoff_ms", max(1, int(connect_timeout * 1000))),
                ("grpc.initial_reconnect_backoff_ms", max(1, int(backoff[0] * 1000))),
                ("grpc.max_reconnect_backoff_ms", max(1, int(reconnect_backoff_max * 1000))),
                *channel_options,
            ]

            def make_stub(grpc_target: str) -> Any:
                channel = grpc.insecure_channel(grpc_target, options=options)
                self._channels.append(channel)
                return pb_grpc.ResolverStub(channel)  # type: ignore[no-untyped-call]

            stub_factory = make_stub
        self._stubs = [stub_factory(grpc_target) for grpc_target in targets]

        self._clock = clock
        self._sleep = sleep
        self._random = random.Random()
        self._lock = threading.Lock()
        self._fresh: BoundedCache[RequestContext, Answer] = BoundedCache(cache_capacity, clock)
        self._last_good: BoundedCache[RequestContext, Answer] = BoundedCache(
            last_known_good_capacity, clock
        )
        self._inflight: Dict[RequestContext, _Flight] = {}
        self._static_defaults = defaults
        self._max_ttl = float(max_ttl)
        self._deadline = float(deadline)
        self._attempts = max(1, int(attempts))
        self._backoff_base = float(backoff[0])
        self._backoff_max = max(float(backoff[1]), self._backoff_base)
        self._routing_header = routing_header.lower()
        # A random first endpoint spreads a fleet of clients over the replicas.
        self._preferred = self._random.randrange(len(self._stubs))
        # Stats field -> count; guarded by the lock.
        self._counters: Dict[str, int] = dict.fromkeys(Stats.__dataclass_fields__, 0)

    # --- resolving -----------------------------------------------------------------

    def resolve(
        self,
        objective: str,
        *,
        subject_id: Optional[str] = None,
        tenant: Optional[str] = None,
        attributes: Optional[Mapping[str, str]] = None,
        experiment_allocations: Optional[Mapping[str, str]] = None,
        traffic_class: TrafficClassLike = TrafficClass.LIVE,
    ) -> Resolved:
        """Resolves a request context: which routing key and model serve it.

        In order:

        1. a fresh cached answer for exactly this context → :attr:`Source.CACHED`, no RPC;
        2. otherwise ``Resolver.Resolve`` on Lightbulb, retried with backoff on retryable
           failures (:func:`~lightbulb_client.is_retryable`) within the deadline →
           :attr:`Source.FRESH`, cached for the TTL Lightbulb returned (capped by
           ``max_ttl``; a TTL of 0 is not cached) and kept as the last known good answer.
           Concurrent misses of the same context share one RPC and its outcome;
        3. if Lightbulb stayed unavailable: the last known good answer for this context →
           :attr:`Source.LAST_KNOWN_GOOD`;
        4. else the objective's static default → :attr:`Source.STATIC_DEFAULT`.

        ``None`` and ``""`` both mean "not set" for the tenant and subject id.

        Raises:
            RejectedError: Lightbulb answered with a non-retryable status (``NOT_FOUND`` for
                an unknown objective, ``INVALID_ARGUMENT``, ...). Never replaced by a
                fallback: stale data would hide a configuration or caller error.
            UnavailableError: Lightbulb stayed unavailable and there is no fallback for the
                context.
            InvalidResponseError: Lightbulb's answer is unusable.
            TypeError, ValueError: the arguments are not strings, or the traffic class is
                unknown.
        """
        return self.resolve_context(
            RequestContext.of(
                objective,
                subject_id=subject_id,
                tenant=tenant,
                attributes=attributes,
                experiment_allocations=experiment_allocations,
                traffic_class=traffic_class,
            )
        )

    def resolve_context(self, ctx: RequestContext) -> Resolved:
        """:meth:`resolve` for a ready-made :class:`RequestContext` (e.g. from
        :meth:`RequestContext.from_proto`). Same order, same errors."""
        with self._lock:
            hit = self._lookup(ctx)
            if hit is not None:
                return hit
            self._count(misses=1)
            flight = self._inflight.get(ctx)
            leader = flight is None
            if flight is None:
                flight = _Flight()
                self._inflight[ctx] = flight
            else:
                self._count(coalesced=1)
        if leader:
            outcome: Optional[_Outcome] = None
            try:
                outcome = self._fetch_and_store(ctx)
            finally:
                with self._lock:
                    if self._inflight.get(ctx) is flight:
                        del self._inflight[ctx]
                # An exception that is not an RPC failure (a bug, KeyboardInterrupt) still
                # releases the callers waiting for this flight: they fall back.
                flight.finish(
                    outcome
                    if outcome is not None
                    else _Failure("exhausted", grpc.StatusCode.UNKNOWN, "resolution aborted", 0)
                )
        else:
            # The leader's RPCs are bounded by the deadline; the margin covers the rest.
            outcome = flight.wait(self._deadline + 1.0)
            if outcome is None:
                outcome = _Failure(
                    "exhausted",
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"no answer within {self._deadline}s",
                    0,
                )
        if isinstance(outcome, Answer):
            return Resolved.of(outcome, Source.FRESH)
        if outcome.kind == "exhausted":
            return self._fall_back(ctx, outcome)
        with self._lock:
            self._count(errors=1)
        if outcome.kind == "rejected":
            assert outcome.code is not None
            raise RejectedError(ctx.objective, outcome.code, outcome.message)
        raise InvalidResponseError(ctx.objective, outcome.message)

    def cached(
        self,
        objective: str,
        *,
        subject_id: Optional[str] = None,
        tenant: Optional[str] = None,
        attributes: Optional[Mapping[str, str]] = None,
        experiment_allocations: Optional[Mapping[str, str]] = None,
        traffic_class: TrafficClassLike = TrafficClass.LIVE,
    ) -> Optional[Resolved]:
        """The fresh cached answer for the context if there is one, without any RPC: the
        first step of :meth:`resolve`, for callers that must not wait.

        A returned answer counts as a hit in :meth:`stats`; ``None`` is not counted.
        """
        ctx = RequestContext.of(
            objective,
            subject_id=subject_id,
            tenant=tenant,
            attributes=attributes,
            experiment_allocations=experiment_allocations,
            traffic_class=traffic_class,
        )
        with self._lock:
            return self._lookup(ctx)

    # --- the rest of the API ---------------------------------------------------------

    def stats(self) -> Stats:
        """The client's counters since it was made."""
        with self._lock:
            return Stats(**self._counters)

    @property
    def routing_header(self) -> str:
        """The routing header this client stamps (lowercase)."""
        return self._routing_header

    def stamp(self, resolved: Resolved, headers: Dict[str, str]) -> Dict[str, str]:
        """Sets the configured routing header in ``headers`` to the answer's routing key,
        replacing any value, and returns ``headers``."""
        stamp(resolved, headers, self._routing_header)
        return headers

    def grpc_metadata(self, resolved: Resolved) -> Tuple[Tuple[str, str], ...]:
        """The configured routing header as gRPC metadata for a call through the router."""
        return grpc_metadata(resolved, self._routing_header)

    def invalidate_cache(self) -> None:
        """Drops every fresh cached answer, so the next resolution of each context asks
        Lightbulb. Last known good answers are kept."""
        with self._lock:
            self._fresh.clear()

    def close(self) -> None:
        """Closes the channels to Lightbulb. Cached answers stay readable with
        :meth:`cached`; a later miss falls back as if Lightbulb were down."""
        for channel in self._channels:
            channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        with self._lock:
            return (
                f"Client(endpoints={self._endpoints!r}, cached_entries={len(self._fresh)}, "
                f"last_known_good_entries={len(self._last_good)}, "
                f"static_defaults={len(self._static_defaults)}, max_ttl={self._max_ttl}, "
                f"deadline={self._deadline}, attempts={self._attempts}, "
                f"routing_header={self._routing_header!r}, stats={Stats(**self._counters)!r})"
            )

    # --- internals -----------------------------------------------------------------

    def _count(self, **deltas: int) -> None:
        # Lock held.
        counters = self._counters
        for name, n in deltas.items():
            counters[name] += n

    def _lookup(self, ctx: RequestContext) -> Optional[Resolved]:
        # Lock held.
        answer = self._fresh.get(ctx)
        if answer is None:
            return None
        self._counters["hits"] += 1
        return Resolved.of(answer, Source.CACHED)

    def _fetch_and_store(self, ctx: RequestContext) -> _Outcome:
        response = self._fetch(ctx)
        if isinstance(response, _Failure):
            return response
        return self._store(ctx, response)

    def _store(self, ctx: RequestContext, response: Any) -> _Outcome:
        """Caches a fresh answer and keeps it as the last known good one."""
        if not response.HasField("objective_config"):
            return _Failure("invalid", message="no objective config")
        if not is_valid_routing_key(response.routing_key):
            return _Failure("invalid", message="routing key is not a valid header value")
        answer = Answer(
            routing_key=response.routing_key,
            config=ObjectiveConfig.from_proto(response.objective_config),
            shadows=tuple(ShadowTarget.from_proto(shadow) for shadow in response.shadows),
            rule_set_version=response.rule_set_version,
        )
        ttl = min(response.cache_ttl_ms / 1000.0, self._max_ttl)
        with self._lock:
            # A zero TTL means "do not cache"; the answer is still the best one to serve if
            # Lightbulb goes away, so it becomes the last known good either way.
            if ttl > 0:
                self._fresh.put(ctx, answer, ttl)
            self._last_good.put(ctx, answer)
        return answer

    def _fall_back(self, ctx: RequestContext, failure: _Failure) -> Resolved:
        assert failure.code is not None
        with self._lock:
            answer = self._last_good.get(ctx)
            if answer is not None:
                self._count(last_known_good=1)
                source = Source.LAST_KNOWN_GOOD
            else:
                answer = self._static_defaults.get(ctx.objective)
                if answer is not None:
                    self._count(static_defaults=1)
                    source = Source.STATIC_DEFAULT
                else:
                    self._count(errors=1)
        if answer is None:
            raise UnavailableError(ctx.objective, failure.attempts, failure.code, failure.message)
        _log.debug(
            "lightbulb unavailable (%s: %s after %d attempt(s)), serving the %s answer for %r",
            failure.code.name,
            failure.message,
            failure.attempts,
            source.value,
            ctx.objective,
        )
        return Resolved.of(answer, source)

    def _fetch(self, ctx: RequestContext) -> Union[Any, _Failure]:
        """``Resolver.Resolve`` with retries: up to ``attempts`` tries within the deadline,
        each on the preferred endpoint, which moves on after each retryable failure."""
        request = ctx.to_proto()
        deadline = self._clock() + self._deadline
        endpoints = len(self._stubs)
        backoffs = 0
        attempt = 0
        while True:
            attempt += 1
            remaining = max(0.0, deadline - self._clock())
            with self._lock:
                index = self._preferred % endpoints
                self._count(rpcs=1)
            try:
                # grpcio sends the budget along (`grpc-timeout`), so Lightbulb can give up
                # in time too.
                return self._stubs[index].Resolve(request, timeout=remaining)
            except grpc.RpcError as err:
                code, message = _status_of(err)
                if not is_retryable(code):
                    return _Failure("rejected", code, message, attempt)
            _log.debug(
                "lightbulb resolve attempt %d on %s failed: %s: %s",
                attempt,
                self._endpoints[index],
                code.name,
                message,
            )
            with self._lock:
                # Fail over: whoever sees the failure first moves every caller to the next
                # endpoint; a concurrent caller that already moved it wins.
                if self._preferred == index:
                    self._preferred = (index + 1) % endpoints
            exhausted = _Failure("exhausted", code, message, attempt)
            if attempt >= self._attempts:
                return exhausted
            # The first retries go to endpoints not yet tried in this call, at once; after
            # that, wait.
            if attempt >= endpoints:
                wait = self._backoff(backoffs)
                backoffs += 1
                if self._clock() + wait >= deadline:
                    return exhausted
                self._sleep(wait)
            elif self._clock() >= deadline:
                return exhausted
            with self._lock:
                self._count(retries=1)

    def _backoff(self, n: int) -> float:
        """The ``n``-th backoff wait (from 0): ``min(max, base * 2**n)``, uniform over its
        upper half so that clients that failed together do not retry together."""
        full = min(self._backoff_max, self._backoff_base * float(1 << min(n, 62)))
        half = full / 2
        return half + self._random.uniform(0.0, half)


def _status_of(err: grpc.RpcError) -> Tuple[grpc.StatusCode, str]:
    """The code and message of a failed call (grpcio's errors are also ``grpc.Call``)."""
    code = err.code() if callable(getattr(err, "code", None)) else None
    details = err.details() if callable(getattr(err, "details", None)) else None
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    return code, details or str(err) or code.name
