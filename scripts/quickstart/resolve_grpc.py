"""Resolve through Lightbulb's gRPC API with no .proto in hand: the service and its messages
come from the server's reflection service (grpcio-reflection), like `grpcurl` does.

    .venv/bin/python scripts/quickstart/resolve_grpc.py 127.0.0.1:50051 \
        '{"objective": "ContinueWatchingRanking", "subjectId": "member-42"}'
"""

from __future__ import annotations

import json
import sys

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

SERVICE = "lightbulb.v1.Resolver"
METHOD = "Resolve"


def main() -> None:
    target, request_json = sys.argv[1], sys.argv[2]
    with grpc.insecure_channel(target) as channel:
        pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        method = pool.FindServiceByName(SERVICE).FindMethodByName(METHOD)
        request_type = message_factory.GetMessageClass(method.input_type)
        response_type = message_factory.GetMessageClass(method.output_type)
        call = channel.unary_unary(
            f"/{SERVICE}/{METHOD}",
            request_serializer=request_type.SerializeToString,
            response_deserializer=response_type.FromString,
        )
        request = json_format.Parse(request_json, request_type())
        response = call(request, timeout=5)
        print(json.dumps(json_format.MessageToDict(response), indent=2))


if __name__ == "__main__":
    main()
