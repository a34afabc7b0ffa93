"""Build hook of lightbulb-client: generates the gRPC stubs from the repository's proto/.

Nothing generated is checked in. When the package is built (``pip install clients/python``,
``pip wheel``, ``python -m build``), ``build_py`` runs grpcio-tools' protoc on
``lightbulb/v1/lightbulb.proto`` and writes ``lightbulb_pb2.py``, ``lightbulb_pb2.pyi`` and
``lightbulb_pb2_grpc.py`` into ``lightbulb_client/_proto/lightbulb/v1/`` of the build tree
(of the source tree for an editable install, where they are ignored by git).

The .proto is looked up in, in order:

1. ``$LIGHTBULB_PROTO_DIR`` (a directory holding ``lightbulb/v1/lightbulb.proto``);
2. ``proto/`` next to this file (an sdist: ``sdist`` copies the .proto in);
3. ``../../proto`` (this package inside the repository checkout).

The runtime requirements are derived from the generated code itself: ``grpcio`` at least
the version the stubs were generated for (they refuse to load on an older one) and
``protobuf`` at least the gencode version (same rule), below the next major but one (the
protobuf runtime supports gencode one major back).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent
PROTO = "lightbulb/v1/lightbulb.proto"
# Where the generated modules live inside the package.
GENERATED_PACKAGE = ("lightbulb_client", "_proto", "lightbulb", "v1")
# The absolute import protoc's gRPC plugin writes; made relative so that the generated
# modules live inside lightbulb_client instead of claiming a top-level `lightbulb` package.
GRPC_IMPORT = "from lightbulb.v1 import lightbulb_pb2 as"
GRPC_IMPORT_RELATIVE = "from . import lightbulb_pb2 as"
INIT_TEXT = '"""Generated at build time from proto/ by grpcio-tools (not in git)."""\n'


def proto_root() -> Path:
    """The directory holding ``lightbulb/v1/lightbulb.proto``."""
    candidates = []
    if os.environ.get("LIGHTBULB_PROTO_DIR"):
        candidates.append(Path(os.environ["LIGHTBULB_PROTO_DIR"]))
    candidates += [HERE / "proto", HERE.parent.parent / "proto"]
    for root in candidates:
        if (root / PROTO).is_file():
            return root
    tried = ", ".join(str(root / PROTO) for root in candidates)
    raise RuntimeError(f"lightbulb-client: {PROTO} not found (tried {tried})")


def generate(package_root: Path) -> Path:
    """Runs protoc on the .proto and writes the modules under ``package_root``.

    Returns the directory of the generated modules.
    """
    import grpc_tools
    from grpc_tools import protoc

    root = proto_root()
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    out = package_root.joinpath(*GENERATED_PACKAGE)
    with tempfile.TemporaryDirectory() as tmp:
        status = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{root}",
                f"-I{well_known}",
                f"--python_out={tmp}",
                f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}",
                PROTO,
            ]
        )
        if status != 0:
            raise RuntimeError(f"lightbulb-client: protoc failed on {root / PROTO} ({status})")
        generated = Path(tmp, "lightbulb", "v1")
        grpc_module = generated / "lightbulb_pb2_grpc.py"
        text = grpc_module.read_text(encoding="utf-8")
        if GRPC_IMPORT not in text:
            raise RuntimeError(
                f"lightbulb-client: {grpc_module.name} has no line {GRPC_IMPORT!r} to make relative"
            )
        grpc_module.write_text(text.replace(GRPC_IMPORT, GRPC_IMPORT_RELATIVE), encoding="utf-8")
        out.mkdir(parents=True, exist_ok=True)
        for name in ("lightbulb_pb2.py", "lightbulb_pb2.pyi", "lightbulb_pb2_grpc.py"):
            shutil.copyfile(generated / name, out / name)
    for depth in range(2, len(GENERATED_PACKAGE) + 1):
        init = package_root.joinpath(*GENERATED_PACKAGE[:depth], "__init__.py")
        init.write_text(INIT_TEXT, encoding="utf-8")
    return out


def runtime_requirements() -> list[str]:
    """``grpcio`` and ``protobuf`` requirements that the generated stubs load with."""
    with tempfile.TemporaryDirectory() as tmp:
        out = generate(Path(tmp))
        pb2 = (out / "lightbulb_pb2.py").read_text(encoding="utf-8")
        grpc_module = (out / "lightbulb_pb2_grpc.py").read_text(encoding="utf-8")
    gencode = re.search(
        r"ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,\s*(\d+),\s*(\d+),\s*(\d+),",
        pb2,
    )
    grpc_version = re.search(r"GRPC_GENERATED_VERSION = '([0-9.]+)'", grpc_module)
    if gencode is None or grpc_version is None:
        raise RuntimeError(
            "lightbulb-client: the generated stubs do not state the protobuf and grpcio versions they need"
        )
    major, minor, patch = (int(part) for part in gencode.groups())
    return [
        f"grpcio>={grpc_version.group(1)}",
        f"protobuf>={major}.{minor}.{patch},<{major + 2}",
    ]


class BuildPyWithStubs(build_py):
    """``build_py`` that also writes the generated stubs into the package."""

    def run(self) -> None:
        super().run()
        # An editable install imports from src/, so the stubs go there (git ignores them).
        target = HERE / "src" if getattr(self, "editable_mode", False) else Path(self.build_lib)
        generate(target)


class SdistWithProto(sdist):
    """``sdist`` that ships the .proto, so that a wheel can be built from the sdist alone."""

    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        dest = Path(base_dir, "proto", PROTO)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(proto_root() / PROTO, dest)


setup(
    install_requires=runtime_requirements(),
    cmdclass={"build_py": BuildPyWithStubs, "sdist": SdistWithProto},
)
