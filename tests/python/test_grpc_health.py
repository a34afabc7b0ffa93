"""grpcio's standard health client through the router: each demo-model instance serves
``grpc.health.v1.Health`` for the whole server and for ``inference.GRPCInferenceService``."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import ROUTING_HEADER, Platform


@pytest.mark.parametrize("service", ["", "inference.GRPCInferenceService"])
@pytest.mark.parametrize("key", ["ranker-v1", "ranker-v2"])
def test_health_check_reports_serving(platform: Platform, key: str, service: str):
    with grpc.insecure_channel(platform.router.proxy) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply, rpc = stub.Check.with_call(
            health_pb2.HealthCheckRequest(service=service), metadata=[(ROUTING_HEADER, key)], timeout=30
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        served_by = dict(rpc.initial_metadata())["x-model-instance"]
        assert served_by == platform.routes[key].instance


def test_an_unknown_service_is_not_found(platform: Platform):
    with grpc.insecure_channel(platform.router.proxy) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Check(
                health_pb2.HealthCheckRequest(service="nope.Service"), metadata=[(ROUTING_HEADER, "ranker-v1")], timeout=30
            )
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
