"""Lightbulb from Python: grpcio with server reflection (no .proto), gRPC health, the
lightbulb_client package (cache, last known good), and the client pattern through the
router to a model server.

The real ``lightbulb`` and ``router`` binaries run on free loopback ports (see
lightbulb_fixtures.py); nothing here waits except by bounded polling.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any, Dict, List

import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

import lightbulb_client
from lightbulb_client import Client, Source
from lightbulb_fixtures import (  # noqa: F401 (fixtures)
    CACHE_TTL_MS,
    DEADLINE,
    OBJECTIVE,
    REPO,
    RULE_SET_VERSION,
    Lightbulb,
    Platform,
    lone_lightbulb,
    lightbulb_platform,
    wait_until,
)

EXAMPLE = REPO / "clients" / "python" / "examples" / "client_pattern.py"


def test_reflection_finds_the_resolver_and_resolve_works_without_the_proto(lightbulb_platform: Platform) -> None:
    with grpc.insecure_channel(lightbulb_platform.lightbulb.grpc) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert {"lightbulb.v1.Resolver", "lightbulb.v1.RoutingConfig", "grpc.health.v1.Health"} <= services

        # A pool of its own, filled only from what the server describes over reflection.
        pool = descriptor_pool.DescriptorPool(database)
        service = pool.FindServiceByName("lightbulb.v1.Resolver")
        assert pool.FindFileContainingSymbol("lightbulb.v1.Resolver").name == "lightbulb/v1/lightbulb.proto"
        assert set(service.methods_by_name) == {"Resolve", "ResolveBatch"}
        method = service.methods_by_name["Resolve"]
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        assert request_class.DESCRIPTOR.file.pool is pool
        resolve = channel.unary_unary(
            f"/{service.full_name}/{method.name}",
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )

        request = request_class(objective=OBJECTIVE, subject_id="member-42")
        request.attributes["country"] = "CA"
        response = resolve(request, timeout=DEADLINE)
        assert response.routing_key == "ranker-v2"
        assert response.objective_config.model_id == "ranker-v2"
        assert response.objective_config.model_version == "2"
        assert dict(response.objective_config.parameters) == {"top_k": "10"}
        assert response.cache_ttl_ms == CACHE_TTL_MS
        assert response.rule_set_version == RULE_SET_VERSION

        elsewhere = resolve(request_class(objective=OBJECTIVE, subject_id="member-42"), timeout=DEADLINE)
        assert elsewhere.routing_key == "ranker-v1"

        with pytest.raises(grpc.RpcError) as caught:
            resolve(request_class(objective="NoSuchObjective"), timeout=DEADLINE)
        assert caught.value.code() is grpc.StatusCode.NOT_FOUND
        assert "NoSuchObjective" in caught.value.details()


def test_grpc_health_answers_serving(lightbulb_platform: Platform) -> None:
    with grpc.insecure_channel(lightbulb_platform.lightbulb.grpc) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "lightbulb.v1.Resolver", "lightbulb.v1.RoutingConfig"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=DEADLINE)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING, service


def test_the_client_caches_within_the_ttl_and_serves_last_known_good_when_lightbulb_is_down(
    lone_lightbulb: Lightbulb,
) -> None:
    lightbulb = lone_lightbulb
    context: Dict[str, Any] = {"subject_id": "member-42", "attributes": {"country": "CA"}}

    def resolves() -> float:
        return lightbulb.metric("lightbulb_resolves_total", objective=OBJECTIVE)

    with Client(lightbulb.grpc_url, deadline=5.0) as client:
        first = client.resolve(OBJECTIVE, **context)
        assert first.source is Source.FRESH
        assert first.routing_key == "ranker-v2"
        assert first.config.model_id == "ranker-v2"
        assert first.config.input_type == "triton_v2"
        assert first.rule_set_version == RULE_SET_VERSION
        wait_until("Lightbulb has counted the first resolve", lambda: resolves() == 1)

        second = client.resolve(OBJECTIVE, **context)
        assert second.source is Source.CACHED
        assert (second.routing_key, second.config) == (first.routing_key, first.config)
        assert resolves() == 1, "a resolution within the TTL does not reach Lightbulb"
        assert client.stats().rpcs == 1

        with pytest.raises(lightbulb_client.RejectedError) as rejected:
            client.resolve("NoSuchObjective")
        assert rejected.value.code is grpc.StatusCode.NOT_FOUND

        lightbulb.stop()
        assert not lightbulb.running()

        cached = client.resolve(OBJECTIVE, **context)
        assert cached.source is Source.CACHED, "within the TTL the answer needs no Lightbulb"

        client.invalidate_cache()
        fallback = client.resolve(OBJECTIVE, **context)
        assert fallback.source is Source.LAST_KNOWN_GOOD
        assert fallback.source.is_fallback
        assert (fallback.routing_key, fallback.config, fallback.rule_set_version) == (
            first.routing_key,
            first.config,
            first.rule_set_version,
        )
        assert client.stats().last_known_good == 1

        with pytest.raises(lightbulb_client.UnavailableError) as unavailable:
            client.resolve(OBJECTIVE, subject_id="never-resolved")
        assert unavailable.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        assert repr(OBJECTIVE) in str(unavailable.value)

    default = lightbulb_client.ObjectiveConfig(objective=OBJECTIVE, model_id="ranker-v1")
    with Client(
        lightbulb.grpc_url, deadline=5.0, static_defaults={OBJECTIVE: ("ranker-v1", default)}
    ) as client:
        served = client.resolve(OBJECTIVE, **context)
        assert served.source is Source.STATIC_DEFAULT
        assert served.routing_key == "ranker-v1"


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [(["country=CA"], "ranker-v2"), (["country=US"], "ranker-v1"), ([], "ranker-v1")],
)
def test_the_client_pattern_reaches_the_upstream_of_the_resolved_key(
    lightbulb_platform: Platform, attributes: List[str], expected: str
) -> None:
    argv = [
        sys.executable,
        str(EXAMPLE),
        "--lightbulb", lightbulb_platform.lightbulb.grpc_url,
        "--router", lightbulb_platform.router.proxy_url,
        "--objective", OBJECTIVE,
        "--subject", "member-42",
        "--path", "/v2/models/ranker/infer",
        "--inputs", "[1, 2, 3]",
    ]  # fmt: skip
    for attribute in attributes:
        argv += ["--attribute", attribute]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=DEADLINE)
    assert run.returncode == 0, run.stderr
    reply = json.loads(run.stdout)

    assert reply["routing_key"] == expected
    assert reply["source"] == "fresh"
    assert reply["status"] == 200
    assert f"cluster={expected}" in reply["served_by"]
    body = reply["body"]
    assert body["upstream"] == expected, "the request reached the routing key's cluster"
    assert body["routing_key"] == expected
    assert body["path"] == "/v2/models/ranker/infer"
    assert body["request"]["inputs"] == [1, 2, 3]
    assert body["request"]["objective_config"]["model_id"] == expected
