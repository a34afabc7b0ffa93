"""The gRPC stubs generated from ``proto/lightbulb/v1/lightbulb.proto`` at build time.

They are written into ``lightbulb_client/_proto/`` by the package's build hook
(``setup.py``) and are not in git, so importing the package from its source tree without
building it fails here, with a message saying how to install it.
"""

from __future__ import annotations

try:
    from ._proto.lightbulb.v1 import lightbulb_pb2 as pb
    from ._proto.lightbulb.v1 import lightbulb_pb2_grpc as pb_grpc
except ModuleNotFoundError as err:  # pragma: no cover - depends on how it was installed
    if err.name is None or not err.name.startswith(__package__ + "._proto"):
        raise
    raise ImportError(
        "lightbulb_client has no generated gRPC stubs: they are made when the package is "
        "built, so install it (e.g. `pip install ./clients/python` from the repository "
        "root) instead of importing it from its source tree"
    ) from err

__all__ = ["pb", "pb_grpc"]
