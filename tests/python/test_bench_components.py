"""The callgrind component split of ``benches/harness/components.py``: what counts for which
component, and the dump cleaning that keeps a warm profile's self costs right."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "components", ROOT / "benches" / "harness" / "components.py"
)
components = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(components)

REGISTRY = "/cargo/registry/src/index.crates.io-0000000000000000"


def test_functions_count_for_the_crate_their_code_comes_from() -> None:
    cases = {
        f"{REGISTRY}/hyper-1.12.0/src/proto/h1/io.rs:hyper::proto::h1::io::Buffered<T,B>::poll_flush [x]": "hyper",
        f"{REGISTRY}/hyper-util-0.1.19/src/server/conn/auto.rs:<hyper_util::server::conn::auto::UpgradeableConnection<I,S,E>>::poll": "hyper",
        f"{REGISTRY}/h2-0.4.20/src/proto/streams/prioritize.rs:h2::proto::connection::Connection<T,P,B>::poll": "h2",
        f"{REGISTRY}/httparse-1.10.1/src/lib.rs:httparse::parse_headers_iter_uninit": "http, httparse, bytes",
        f"{REGISTRY}/tokio-1.54.1/src/runtime/io/registration.rs:tokio::runtime::io::registration::Registration::poll_ready": "tokio",
        f"{REGISTRY}/foldhash-0.2.0/src/lib.rs:router::proxy::handle::{{{{closure}}}}": "other crates",
        "/src/repo/router/src/proxy.rs:router::proxy::handle::{{closure}} [router]": "router",
        "/build/out/include/jemalloc/internal/cache_bin.h:_rjem_malloc [router]": "allocator",
        "./string/../sysdeps/x86_64/multiarch/memmove-vec-unaligned-erms.S:__memcpy_avx_unaligned_erms [/usr/lib/libc.so.6]": "libc (memcpy, clock, syscall stubs)",
        "./malloc/./malloc/malloc.c:malloc [/usr/lib/libc.so.6]": "allocator",
        # Standard-library code, by the type it was instantiated for.
        "/rustc/abc/library/core/src/ptr/mod.rs:core::ptr::drop_in_place<http::header::map::HeaderMap>": "http, httparse, bytes",
        "/rustc/abc/library/core/src/ptr/mod.rs:core::ptr::drop_in_place<router::proxy::SavedHead>": "router",
        "/rustc/abc/library/std/src/sys/pal/unix/time.rs:<std::sys::pal::unix::time::Timespec>::sub_timespec": "std (unattributed)",
    }
    for entry, component in cases.items():
        assert components.classify(entry) == component, entry


def test_open_call_edges_are_dropped_and_compressed_names_kept(tmp_path: Path) -> None:
    # A dump made after zeroing: `clone` calls `start_thread` "0 times" with everything since
    # as the call's cost, and the `cfn=` line is where id 7's name is defined.
    profile = tmp_path / "cg.out"
    profile.write_text(
        "events: Ir\n"
        "fl=(1) clone.S\n"
        "fn=(6) clone\n"
        "cfi=(2) pthread_create.c\n"
        "cfn=(7) start_thread\n"
        "calls=0 336\n"
        "100 435917179\n"
        "\n"
        "fl=(2)\n"
        "fn=(7)\n"
        "10 42\n"
    )
    cleaned = Path(components.without_open_calls(str(profile)))
    try:
        text = cleaned.read_text()
    finally:
        cleaned.unlink()
    assert "calls=0" not in text
    assert "435917179" not in text
    assert "cfn=(7) start_thread" in text
    assert "fn=(7)\n10 42\n" in text
