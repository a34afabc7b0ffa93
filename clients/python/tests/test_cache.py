"""The cache, last-known-good and retry logic of lightbulb_client.Client, without a server.

Every test drives time with a fake clock (backoff "sleeps" advance it), and Lightbulb is a
scripted fake stub, so nothing here waits on the wall clock.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import grpc
import pytest

import lightbulb_client as lc
from lightbulb_client import BoundedCache, Client, RequestContext, Source, proto


class FakeClock:
    """Monotonic seconds that move only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: List[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class FakeRpcError(grpc.RpcError):
    """What a failed grpcio call raises: an RpcError with a code and details."""

    def __init__(self, code: grpc.StatusCode, details: str = "") -> None:
        super().__init__(details)
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


Script = Union[Any, FakeRpcError, Callable[[Any, float], Any]]


class FakeStub:
    """A Resolver stub answering from a script: each call takes the next entry (the last
    one repeats). An entry is a response, an error to raise, or a function of the request
    and the timeout."""

    def __init__(self, *script: Script) -> None:
        self.script = list(script)
        self.calls: List[Tuple[Any, float]] = []

    def Resolve(self, request: Any, timeout: float) -> Any:  # noqa: N802 (grpc's name)
        self.calls.append((request, timeout))
        entry = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(entry, FakeRpcError):
            raise entry
        if callable(entry):
            return entry(request, timeout)
        return entry


def answer(key: str = "ranker-v2", ttl_ms: int = 60_000, version: int = 7) -> Any:
    return proto.ResolveResponse(
        routing_key=key,
        objective_config=proto.ObjectiveConfig(
            objective="Ranking",
            model_id=key,
            model_version="2",
            experiment_id="exp",
            experiment_cell="treatment",
            parameters={"temperature": "0"},
        ),
        shadows=[proto.ShadowTarget(model_id="ranker-v3", routing_key="ranker-v3", sample_percent=5)],
        cache_ttl_ms=ttl_ms,
        rule_set_version=version,
    )


UNAVAILABLE = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "connection refused")


def make_client(clock: FakeClock, *stubs: FakeStub, **settings: Any) -> Client:
    targets = [f"http://127.0.0.1:{port}" for port in range(1, len(stubs) + 1)]
    by_target = dict(zip((t[len("http://") :] for t in targets), stubs))
    settings.setdefault("deadline", 1.0)
    return Client(
        targets,
        clock=clock,
        sleep=clock.sleep,
        stub_factory=lambda target: by_target[target],
        **settings,
    )


def resolve(client: Client, **ctx: Any) -> lc.Resolved:
    return client.resolve("Ranking", subject_id="user-1", attributes={"country": "CA"}, **ctx)


# --- the bounded cache itself -----------------------------------------------------------


def test_an_entry_is_served_until_its_ttl_and_not_at_it() -> None:
    clock = FakeClock()
    cache: BoundedCache[str, int] = BoundedCache(10, clock)
    cache.put("a", 1, ttl=5.0)
    clock.advance(4.999)
    assert cache.get("a") == 1
    clock.advance(0.001)
    assert cache.get("a") is None
    assert len(cache) == 0, "an expired entry is dropped when seen"


def test_entries_without_ttl_never_expire_and_the_least_recent_is_evicted() -> None:
    clock = FakeClock()
    cache: BoundedCache[str, int] = BoundedCache(2, clock)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "b" is now the least recently used
    cache.put("c", 3)
    assert cache.get("b") is None
    clock.advance(86_400 * 365)
    assert (cache.get("a"), cache.get("c")) == (1, 3)


def test_zero_capacity_or_zero_ttl_keeps_nothing() -> None:
    clock = FakeClock()
    none: BoundedCache[str, int] = BoundedCache(0, clock)
    none.put("a", 1)
    assert none.get("a") is None
    cache: BoundedCache[str, int] = BoundedCache(5, clock)
    cache.put("a", 1, ttl=10)
    cache.put("a", 2, ttl=0)
    assert cache.get("a") is None


# --- the fresh cache and the server's TTL -----------------------------------------------


def test_a_second_resolution_within_the_ttl_is_cached_without_an_rpc() -> None:
    clock = FakeClock()
    stub = FakeStub(answer(ttl_ms=10_000))
    client = make_client(clock, stub)

    first = resolve(client)
    assert first.source is Source.FRESH
    assert first.routing_key == "ranker-v2"
    assert first.config.model_id == "ranker-v2"
    assert first.config.experiment == lc.ExperimentCell("exp", "treatment")
    assert first.config.parameters == {"temperature": "0"}
    assert first.shadows == (lc.ShadowTarget("ranker-v3", "ranker-v3", 5.0),)
    assert first.rule_set_version == 7

    clock.advance(9.999)
    second = resolve(client)
    assert second.source is Source.CACHED
    assert (second.routing_key, second.config) == (first.routing_key, first.config)
    assert len(stub.calls) == 1
    assert client.cached("Ranking", subject_id="user-1", attributes={"country": "CA"}) is not None

    clock.advance(0.001)
    assert resolve(client).source is Source.FRESH, "at the TTL the entry is gone"
    assert len(stub.calls) == 2
    stats = client.stats()
    assert (stats.hits, stats.misses, stats.rpcs) == (2, 2, 2)


def test_the_server_ttl_is_capped_by_max_ttl() -> None:
    clock = FakeClock()
    stub = FakeStub(answer(ttl_ms=3_600_000))
    client = make_client(clock, stub, max_ttl=2.0)
    resolve(client)
    clock.advance(1.999)
    assert resolve(client).source is Source.CACHED
    clock.advance(0.001)
    assert resolve(client).source is Source.FRESH


def test_a_zero_ttl_is_not_cached_but_is_kept_as_last_known_good() -> None:
    clock = FakeClock()
    stub = FakeStub(answer(ttl_ms=0), UNAVAILABLE)
    client = make_client(clock, stub)
    assert resolve(client).source is Source.FRESH
    served = resolve(client)
    assert served.source is Source.LAST_KNOWN_GOOD
    assert served.routing_key == "ranker-v2"


def test_max_ttl_zero_or_capacity_zero_disables_the_cache() -> None:
    for settings in ({"max_ttl": 0}, {"cache_capacity": 0}):
        clock = FakeClock()
        stub = FakeStub(answer())
        client = make_client(clock, stub, **settings)
        resolve(client)
        assert resolve(client).source is Source.FRESH, settings
        assert len(stub.calls) == 2


def test_every_field_of_the_context_is_part_of_the_key() -> None:
    clock = FakeClock()
    stub = FakeStub(answer())
    client = make_client(clock, stub)
    resolve(client)
    variants: List[Dict[str, Any]] = [
        {"tenant": "kids"},
        {"traffic_class": "synthetic"},
        {"experiment_allocations": {"exp": "control"}},
    ]
    for extra in variants:
        assert resolve(client, **extra).source is Source.FRESH, extra
    assert client.resolve("Ranking", subject_id="user-2", attributes={"country": "CA"}).source is Source.FRESH
    assert client.resolve("Ranking", subject_id="user-1").source is Source.FRESH
    assert len(stub.calls) == 6


def test_equal_contexts_share_an_entry_whatever_their_form() -> None:
    clock = FakeClock()
    stub = FakeStub(answer())
    client = make_client(clock, stub)
    client.resolve("Ranking", tenant=None, attributes={"device": "tv", "country": "CA"})
    again = client.resolve("Ranking", tenant="", subject_id="", attributes={"country": "CA", "device": "tv"})
    assert again.source is Source.CACHED
    request = proto.ResolveRequest(
        objective="Ranking",
        attributes={"country": "CA", "device": "tv"},
        traffic_class=proto.TRAFFIC_CLASS_UNSPECIFIED,
    )
    assert client.resolve_context(RequestContext.from_proto(request)).source is Source.CACHED
    assert len(stub.calls) == 1


def test_an_attribute_is_not_an_allocation() -> None:
    a = RequestContext.of("o", attributes={"x": "y"})
    b = RequestContext.of("o", experiment_allocations={"x": "y"})
    assert a != b


def test_the_request_sent_carries_the_whole_context() -> None:
    clock = FakeClock()
    stub = FakeStub(answer())
    client = make_client(clock, stub)
    client.resolve(
        "Ranking",
        tenant="kids",
        subject_id="user-1",
        attributes={"country": "CA"},
        experiment_allocations={"exp": "control"},
        traffic_class=lc.TrafficClass.SYNTHETIC,
    )
    request, _timeout = stub.calls[0]
    assert request.objective == "Ranking"
    assert (request.tenant, request.subject_id) == ("kids", "user-1")
    assert dict(request.attributes) == {"country": "CA"}
    assert dict(request.experiment_allocations) == {"exp": "control"}
    assert request.traffic_class == proto.TRAFFIC_CLASS_SYNTHETIC


def test_invalidate_cache_keeps_the_last_known_good_answers() -> None:
    clock = FakeClock()
    stub = FakeStub(answer(), UNAVAILABLE)
    client = make_client(clock, stub)
    resolve(client)
    client.invalidate_cache()
    assert client.cached("Ranking", subject_id="user-1", attributes={"country": "CA"}) is None
    assert resolve(client).source is Source.LAST_KNOWN_GOOD


# --- last known good, static defaults, errors -------------------------------------------


def test_last_known_good_is_served_when_lightbulb_is_down_however_old() -> None:
    clock = FakeClock()
    stub = FakeStub(answer(ttl_ms=1_000), UNAVAILABLE)
    client = make_client(clock, stub)
    fresh = resolve(client)
    clock.advance(86_400 * 30)
    served = resolve(client)
    assert served.source is Source.LAST_KNOWN_GOOD
    assert served.source.is_fallback
    assert (served.routing_key, served.config, served.rule_set_version) == (
        fresh.routing_key,
        fresh.config,
        fresh.rule_set_version,
    )
    assert client.stats().last_known_good == 1
    assert client.stats().errors == 0


def test_a_new_answer_replaces_the_last_known_good() -> None:
    clock = FakeClock()
    stub = FakeStub(answer("ranker-v1", ttl_ms=1_000), answer("ranker-v2", ttl_ms=1_000), UNAVAILABLE)
    client = make_client(clock, stub)
    resolve(client)
    clock.advance(1)
    resolve(client)
    clock.advance(1)
    assert resolve(client).routing_key == "ranker-v2"


def test_a_rejection_is_never_masked_by_a_fallback() -> None:
    clock = FakeClock()
    not_found = FakeRpcError(grpc.StatusCode.NOT_FOUND, 'unknown objective "Ranking"')
    stub = FakeStub(answer(ttl_ms=1_000), not_found)
    client = make_client(
        clock, stub, static_defaults={"Ranking": ("ranker-v1", lc.ObjectiveConfig(model_id="ranker-v1"))}
    )
    resolve(client)
    clock.advance(1)
    with pytest.raises(lc.RejectedError) as caught:
        resolve(client)
    err = caught.value
    assert err.code is grpc.StatusCode.NOT_FOUND
    assert err.objective == "Ranking"
    assert err.label == "rejected"
    assert str(err) == "lightbulb rejected the request (NOT_FOUND: unknown objective \"Ranking\") for objective 'Ranking'"
    assert len(stub.calls) == 2, "a rejection is not retried"
    assert client.stats().errors == 1


def test_the_static_default_answers_a_context_lightbulb_never_answered() -> None:
    clock = FakeClock()
    stub = FakeStub(UNAVAILABLE)
    default = lc.ObjectiveConfig(objective="Ranking", model_id="ranker-v1")
    client = make_client(clock, stub, static_defaults={"Ranking": ("ranker-v1", default)})
    served = resolve(client)
    assert served.source is Source.STATIC_DEFAULT
    assert (served.routing_key, served.config, served.rule_set_version) == ("ranker-v1", default, 0)
    assert client.stats().static_defaults == 1


def test_last_known_good_comes_before_the_static_default() -> None:
    clock = FakeClock()
    stub = FakeStub(answer(ttl_ms=0), UNAVAILABLE)
    client = make_client(
        clock, stub, static_defaults={"Ranking": ("ranker-v1", lc.ObjectiveConfig(model_id="ranker-v1"))}
    )
    resolve(client)
    assert resolve(client).routing_key == "ranker-v2"


def test_without_a_fallback_unavailability_is_a_clear_error() -> None:
    clock = FakeClock()
    stub = FakeStub(UNAVAILABLE)
    client = make_client(clock, stub, attempts=2)
    with pytest.raises(lc.UnavailableError) as caught:
        resolve(client)
    err = caught.value
    assert err.code is grpc.StatusCode.UNAVAILABLE
    assert err.attempts == 2
    assert err.label == "unavailable"
    assert str(err) == (
        "lightbulb unavailable after 2 attempt(s) (UNAVAILABLE: connection refused), "
        "no fallback for objective 'Ranking'"
    )
    assert client.stats().errors == 1


def test_last_known_good_capacity_zero_disables_the_fallback() -> None:
    clock = FakeClock()
    stub = FakeStub(answer(ttl_ms=0), UNAVAILABLE)
    client = make_client(clock, stub, last_known_good_capacity=0)
    resolve(client)
    with pytest.raises(lc.UnavailableError):
        resolve(client)


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        (proto.ResolveResponse(routing_key="ranker-v2", cache_ttl_ms=1000), "no objective config"),
        (
            proto.ResolveResponse(
                routing_key="has space", objective_config=proto.ObjectiveConfig(), cache_ttl_ms=1000
            ),
            "routing key is not a valid header value",
        ),
    ],
)
def test_an_unusable_answer_is_an_error_and_is_not_kept(response: Any, reason: str) -> None:
    clock = FakeClock()
    stub = FakeStub(response, UNAVAILABLE)
    client = make_client(clock, stub)
    with pytest.raises(lc.InvalidResponseError) as caught:
        resolve(client)
    assert caught.value.reason == reason
    assert caught.value.code is None
    with pytest.raises(lc.UnavailableError):
        resolve(client)


# --- retries, backoff, failover, deadline -----------------------------------------------


def test_retryable_failures_are_retried_with_backoff_within_the_attempts() -> None:
    clock = FakeClock()
    stub = FakeStub(UNAVAILABLE, FakeRpcError(grpc.StatusCode.INTERNAL, "boom"), answer())
    client = make_client(clock, stub, attempts=3, backoff=(0.02, 0.2))
    assert resolve(client).source is Source.FRESH
    assert len(stub.calls) == 3
    # One endpoint: every retry waits, min(max, base * 2^n) jittered over its upper half.
    assert len(clock.slept) == 2
    assert 0.01 <= clock.slept[0] <= 0.02
    assert 0.02 <= clock.slept[1] <= 0.04
    stats = client.stats()
    assert (stats.rpcs, stats.retries, stats.misses) == (3, 2, 1)


def test_a_failure_moves_to_the_next_endpoint_at_once_and_stays_there() -> None:
    clock = FakeClock()
    first, second = FakeStub(UNAVAILABLE), FakeStub(answer(ttl_ms=0))
    client = make_client(clock, first, second)
    client._preferred = 0  # the random start, fixed for the test
    assert resolve(client).source is Source.FRESH
    assert (len(first.calls), len(second.calls)) == (1, 1)
    assert clock.slept == [], "an endpoint not yet tried is retried without waiting"
    resolve(client)
    assert (len(first.calls), len(second.calls)) == (1, 2), "the working endpoint is kept"


def test_each_attempt_gets_what_is_left_of_the_deadline() -> None:
    clock = FakeClock()

    def slow_failure(_request: Any, timeout: float) -> Any:
        clock.advance(0.3)
        raise UNAVAILABLE

    stub = FakeStub(slow_failure, answer())
    client = make_client(clock, stub, deadline=1.0, backoff=(0.1, 0.1))
    resolve(client)
    timeouts = [timeout for _request, timeout in stub.calls]
    assert timeouts[0] == pytest.approx(1.0)
    assert timeouts[1] == pytest.approx(1.0 - 0.3 - clock.slept[0])


def test_a_backoff_that_would_pass_the_deadline_gives_up_at_once() -> None:
    clock = FakeClock()
    stub = FakeStub(UNAVAILABLE)
    client = make_client(clock, stub, deadline=0.05, attempts=10, backoff=(0.2, 0.2))
    with pytest.raises(lc.UnavailableError) as caught:
        resolve(client)
    assert caught.value.attempts == 1
    assert clock.slept == []


def test_backoff_doubles_up_to_the_max_with_jitter_in_the_upper_half() -> None:
    client = make_client(FakeClock(), FakeStub(answer()), backoff=(0.01, 0.08))
    for n, full in [(0, 0.01), (1, 0.02), (2, 0.04), (3, 0.08), (4, 0.08), (100, 0.08)]:
        for _ in range(50):
            wait = client._backoff(n)
            assert full / 2 <= wait <= full, (n, wait)


def test_concurrent_misses_of_one_context_share_one_rpc() -> None:
    clock = FakeClock()
    release = threading.Event()

    def held(_request: Any, _timeout: float) -> Any:
        assert release.wait(10), "the test never released the RPC"
        return answer()

    stub = FakeStub(held)
    client = make_client(clock, stub)
    results: List[Optional[lc.Resolved]] = [None, None]

    def run(i: int) -> None:
        results[i] = resolve(client)

    leader = threading.Thread(target=run, args=(0,))
    leader.start()
    follower = threading.Thread(target=run, args=(1,))
    follower.start()
    # Bounded polling for the follower to join the flight, then let the RPC answer.
    give_up = time.monotonic() + 10
    while client.stats().coalesced == 0 and time.monotonic() < give_up:
        threading.Event().wait(0.001)
    release.set()
    leader.join(10)
    follower.join(10)
    assert client.stats().coalesced == 1
    assert len(stub.calls) == 1
    assert [r.source for r in results if r] == [Source.FRESH, Source.FRESH]


# --- settings and helpers ---------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [[], "", "https://lightbulb:50051", "http://", "http://host:1/path", "ftp://host:1"],
)
def test_invalid_endpoints_are_config_errors(target: Any) -> None:
    with pytest.raises(lc.ConfigError):
        Client(target, stub_factory=lambda _t: FakeStub(answer()))


def test_other_invalid_settings_are_config_errors() -> None:
    stub_factory = lambda _t: FakeStub(answer())  # noqa: E731
    with pytest.raises(lc.ConfigError, match="deadline"):
        Client("http://127.0.0.1:1", deadline=0, stub_factory=stub_factory)
    with pytest.raises(lc.ConfigError, match="'Ranking'"):
        Client(
            "http://127.0.0.1:1",
            static_defaults={"Ranking": ("has space", lc.ObjectiveConfig())},
            stub_factory=stub_factory,
        )


def test_endpoints_accept_http_uris_and_grpc_targets() -> None:
    seen: List[str] = []

    def factory(target: str) -> FakeStub:
        seen.append(target)
        return FakeStub(answer())

    Client(["http://127.0.0.1:50051", "127.0.0.1:50052", "dns:///lightbulb:50051"], stub_factory=factory)
    assert seen == ["127.0.0.1:50051", "127.0.0.1:50052", "dns:///lightbulb:50051"]


def test_stamp_replaces_the_routing_header_whatever_its_case() -> None:
    clock = FakeClock()
    client = make_client(clock, FakeStub(answer()), routing_header="X-Model-Route")
    resolved = resolve(client)
    headers = {"X-Model-Route": "stale", "content-type": "application/json"}
    assert client.stamp(resolved, headers) == {"content-type": "application/json", "x-model-route": "ranker-v2"}
    assert lc.stamp(resolved, {}) == {"x-routing-key": "ranker-v2"}
    assert client.grpc_metadata(resolved) == (("x-model-route", "ranker-v2"),)


def test_answers_are_read_only() -> None:
    client = make_client(FakeClock(), FakeStub(answer()))
    resolved = resolve(client)
    with pytest.raises(TypeError):
        resolved.config.parameters["temperature"] = "1"  # type: ignore[index]
    assert resolved.config.to_dict()["experiment_cell"] == "treatment"
