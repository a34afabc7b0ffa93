"""One inference with NVIDIA's tritonclient through the router, over HTTP (binary tensors,
tritonclient's default) or gRPC; prints which model version and instance answered.

    .venv/bin/python scripts/quickstart/triton_infer.py http 127.0.0.1:8080 ranker-v1
    .venv/bin/python scripts/quickstart/triton_infer.py grpc 127.0.0.1:8080 ranker-v2
"""

from __future__ import annotations

import sys

import numpy as np

MODEL = "ranker"


def main() -> None:
    protocol, url, key = sys.argv[1], sys.argv[2], sys.argv[3]
    headers = {"x-routing-key": key}
    data = np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32)
    if protocol == "http":
        import tritonclient.http as client
    elif protocol == "grpc":
        import tritonclient.grpc as client
    else:
        sys.exit(f"protocol must be http or grpc, not {protocol!r}")
    triton = client.InferenceServerClient(url=url)
    metadata = triton.get_model_metadata(MODEL, headers=headers)
    versions = metadata["versions"] if isinstance(metadata, dict) else list(metadata.versions)
    tensor = client.InferInput("INPUT0", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    result = triton.infer(MODEL, [tensor], headers=headers)
    response = result.get_response()
    if isinstance(response, dict):
        version, instance = response["model_version"], response["parameters"]["instance"]
    else:
        version, instance = response.model_version, response.parameters["instance"].string_param
    output = result.as_numpy("OUTPUT0").tolist()
    print(f"{protocol}: key {key} -> model {MODEL} version {version} (metadata: versions {versions}) "
          f"on instance {instance}: OUTPUT0 = {output}")


if __name__ == "__main__":
    main()
