"""tritonclient (HTTP and gRPC) through the router: the routing key travels as a header, the
router forwards the Open Inference Protocol untouched (REST over HTTP/1.1, gRPC over h2c), and
the served model version and instance prove which cluster answered."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import ROUTING_HEADER, SMALL_ROUTE_LIMIT, Platform

KEYS = ["ranker-v1", "ranker-v2"]
NP_TYPES = {"FP32": np.float32, "FP64": np.float64, "INT32": np.int32, "INT64": np.int64}


def headers(key: str) -> dict[str, str]:
    return {ROUTING_HEADER: key}


@pytest.fixture(scope="module")
def http_client(platform: Platform):
    client = httpclient.InferenceServerClient(platform.router.proxy, connection_timeout=30, network_timeout=30)
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpc_client(platform: Platform):
    client = grpcclient.InferenceServerClient(platform.router.proxy)
    yield client
    client.close()


@pytest.mark.parametrize("key", KEYS)
def test_http_metadata_and_readiness_come_from_the_routed_instance(platform: Platform, http_client, key: str):
    served = platform.routes[key]
    server = http_client.get_server_metadata(headers=headers(key))
    assert server["name"] == "demo-model"
    assert "binary_tensor_data" in server["extensions"]
    assert http_client.is_server_live(headers=headers(key))
    assert http_client.is_server_ready(headers=headers(key))

    meta = http_client.get_model_metadata("ranker", headers=headers(key))
    assert meta["name"] == "ranker"
    assert meta["versions"] == [served.version]
    assert [t["name"] for t in meta["inputs"]] == ["INPUT0"]
    assert [t["name"] for t in meta["outputs"]] == ["OUTPUT0"]
    assert http_client.is_model_ready("ranker", headers=headers(key))
    assert http_client.is_model_ready("ranker", served.version, headers=headers(key))
    other = "2" if served.version == "1" else "1"
    assert not http_client.is_model_ready("ranker", other, headers=headers(key))


@pytest.mark.parametrize("binary_data", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("dtype", ["FP32", "INT64"])
def test_http_infer_doubles_the_input_on_the_routed_version(
    platform: Platform, http_client, key: str, binary_data: bool, dtype: str
):
    served = platform.routes[key]
    x = (np.arange(-3, 9).reshape(3, 4) * (0.5 if dtype == "FP32" else 1)).astype(NP_TYPES[dtype])
    inp = httpclient.InferInput("INPUT0", list(x.shape), dtype)
    inp.set_data_from_numpy(x, binary_data=binary_data)
    out = httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary_data)
    result = http_client.infer("ranker", [inp], outputs=[out], request_id="req-1", headers=headers(key))

    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x * 2)
    response = result.get_response()
    assert response["model_name"] == "ranker"
    assert response["model_version"] == served.version
    assert response["id"] == "req-1"
    assert response["parameters"]["instance"] == served.instance
    assert ("parameters" in response["outputs"][0]) == binary_data, response


@pytest.mark.parametrize("key", KEYS)
def test_http_infer_with_default_outputs_answers_binary(platform: Platform, http_client, key: str):
    x = np.array([[1.5, -2.0]], dtype=np.float64)
    inp = httpclient.InferInput("INPUT0", list(x.shape), "FP64")
    inp.set_data_from_numpy(x)
    result = http_client.infer("ranker", [inp], headers=headers(key))
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x * 2)
    assert result.get_response()["outputs"][0]["parameters"]["binary_data_size"] == x.nbytes
    assert result.get_response()["parameters"]["instance"] == platform.routes[key].instance


@pytest.mark.parametrize("key", KEYS)
def test_http_errors_surface_as_client_exceptions(http_client, key: str):
    x = np.zeros((1,), dtype=np.float32)
    inp = httpclient.InferInput("INPUT0", [1], "FP32")
    inp.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException, match="not served") as err:
        http_client.infer("nope", [inp], headers=headers(key))
    assert err.value.status() == "404"


@pytest.mark.parametrize("key", KEYS)
def test_grpc_metadata_and_readiness_come_from_the_routed_instance(platform: Platform, grpc_client, key: str):
    served = platform.routes[key]
    server = grpc_client.get_server_metadata(headers=headers(key))
    assert server.name == "demo-model"
    assert "binary_tensor_data" in server.extensions
    assert grpc_client.is_server_live(headers=headers(key))
    assert grpc_client.is_server_ready(headers=headers(key))
    meta = grpc_client.get_model_metadata("ranker", headers=headers(key))
    assert list(meta.versions) == [served.version]
    assert meta.inputs[0].name == "INPUT0"
    assert grpc_client.is_model_ready("ranker", headers=headers(key))
    assert grpc_client.is_model_ready("ranker", served.version, headers=headers(key))
    assert not grpc_client.is_model_ready("nope", headers=headers(key))


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("dtype", ["FP32", "FP64", "INT32", "INT64"])
def test_grpc_infer_doubles_the_input_on_the_routed_version(platform: Platform, grpc_client, key: str, dtype: str):
    served = platform.routes[key]
    x = np.arange(-4, 8).reshape(2, 3, 2).astype(NP_TYPES[dtype])
    inp = grpcclient.InferInput("INPUT0", list(x.shape), dtype)
    inp.set_data_from_numpy(x)
    out = grpcclient.InferRequestedOutput("OUTPUT0")
    result = grpc_client.infer("ranker", [inp], outputs=[out], request_id="g-1", headers=headers(key))

    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x * 2)
    response = result.get_response()
    assert response.model_name == "ranker"
    assert response.model_version == served.version
    assert response.id == "g-1"
    assert response.parameters["instance"].string_param == served.instance
    # tritonclient.grpc sends raw_input_contents, so the answer is raw too.
    assert len(response.raw_output_contents) == 1


@pytest.mark.parametrize("key", KEYS)
def test_grpc_errors_surface_with_their_status(grpc_client, key: str):
    x = np.zeros((1,), dtype=np.float32)
    inp = grpcclient.InferInput("INPUT0", [1], "FP32")
    inp.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException) as err:
        grpc_client.infer("nope", [inp], headers=headers(key))
    assert "NOT_FOUND" in str(err.value.status()), err.value


def test_an_unknown_routing_key_is_the_routers_own_answer(http_client, grpc_client):
    with pytest.raises(InferenceServerException) as err:
        http_client.get_server_metadata(headers=headers("nope"))
    assert err.value.status() == "404"
    # The router's error is an object ({"code", "message", "routing_key"}), not the protocol's
    # string: tritonclient hands it over as the message as it is.
    assert err.value.message()["code"] == "unknown_routing_key"
    with pytest.raises(InferenceServerException) as err:
        grpc_client.get_server_metadata(headers=headers("nope"))
    assert "NOT_FOUND" in str(err.value.status()), err.value


# === the per-route request body limit (`max_request_body_bytes`) ===


def big_and_small_inputs(client_module):
    """An FP32 tensor four times the ``ranker-small`` limit, and one well within it."""
    big = np.ones((SMALL_ROUTE_LIMIT,), dtype=np.float32)
    small = np.arange(16, dtype=np.float32)
    inputs = []
    for x in (big, small):
        inp = client_module.InferInput("INPUT0", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        inputs.append((x, inp))
    return inputs


def test_http_infer_past_the_route_body_limit_is_413(http_client):
    (_, big), (small_x, small) = big_and_small_inputs(httpclient)
    with pytest.raises(InferenceServerException) as refused:
        http_client.infer("ranker", [big], headers=headers("ranker-small"))
    assert refused.value.status() == "413", refused.value
    assert "request_body_too_large" in str(refused.value.message()), refused.value
    # The same route still takes a body within the limit.
    result = http_client.infer("ranker", [small], headers=headers("ranker-small"))
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), small_x * 2)


def test_grpc_infer_past_the_route_body_limit_is_resource_exhausted(grpc_client):
    (_, big), (small_x, small) = big_and_small_inputs(grpcclient)
    with pytest.raises(InferenceServerException) as refused:
        grpc_client.infer("ranker", [big], headers=headers("ranker-small"))
    assert refused.value.status() == "StatusCode.RESOURCE_EXHAUSTED", refused.value
    assert "request_body_too_large" in str(refused.value.message()), refused.value
    result = grpc_client.infer("ranker", [small], headers=headers("ranker-small"))
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), small_x * 2)
