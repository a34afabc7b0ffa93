#!/usr/bin/env python3
"""Instructions per request by component, from two callgrind profiles of the same router.

    components.py N1 FILE1 N2 FILE2 [--top K]

FILE1 and FILE2 are callgrind outputs of runs that served N1 and N2 requests; each
function's self cost is taken from `callgrind_annotate --inclusive=no`, and its cost per
request is (cost in FILE2 - cost in FILE1) / (N2 - N1), so start-up and shutdown cancel out.

A function belongs to the component of the code it was written in: callgrind attributes
inlined code to the file it comes from, so `file:function` is classified by the file first
(the crate's directory in the cargo registry, the workspace's own crates, libc's sources)
and by the function's path when the file is the standard library's (generic code
instantiated for a crate's types, e.g. `core::ptr::drop_in_place<hyper::...>`).
Prints one line per component (instructions per request and share) and, with --top K, the
K most expensive functions.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter

# Component of a cargo registry crate, by crate name (the directory is NAME-VERSION).
CRATES = {
    "hyper": "hyper",
    "hyper-util": "hyper",
    "h2": "h2",
    "http": "http, httparse, bytes",
    "httparse": "http, httparse, bytes",
    "bytes": "http, httparse, bytes",
    "http-body": "http, httparse, bytes",
    "http-body-util": "http, httparse, bytes",
    "tokio": "tokio",
    "tokio-util": "tokio",
    "mio": "tokio",
    "tikv-jemallocator": "allocator",
    "tikv-jemalloc-sys": "allocator",
    "metrics": "metrics",
    "metrics-util": "metrics",
    "metrics-exporter-prometheus": "metrics",
    "quanta": "metrics",
    "tracing": "tracing",
    "tracing-core": "tracing",
    "tracing-subscriber": "tracing",
}
# The workspace's crates, by directory under the repository.
WORKSPACE = ("router/", "models-config/", "runtime/", "proto/")
# Function-path prefixes, for code whose file is the standard library's.
PREFIXES = [
    ("router::", "router"),
    ("models_config::", "router"),
    ("service_runtime::", "router"),
    ("hyper_util::", "hyper"),
    ("hyper::", "hyper"),
    ("h2::", "h2"),
    ("http::", "http, httparse, bytes"),
    ("httparse::", "http, httparse, bytes"),
    ("bytes::", "http, httparse, bytes"),
    ("http_body", "http, httparse, bytes"),
    ("tokio_util::", "tokio"),
    ("tokio::", "tokio"),
    ("mio::", "tokio"),
    ("metrics", "metrics"),
    ("quanta::", "metrics"),
    ("tracing", "tracing"),
]
LINE = re.compile(r"^\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(.*)$")
REGISTRY = re.compile(r"/registry/src/[^/]+/([A-Za-z0-9_-]+?)-\d+\.\d+[^/]*/")


def classify(file_fn: str) -> str:
    """The component of one `file:function [object]` entry of callgrind_annotate."""
    file, _, function = file_fn.partition(":")
    if "jemalloc" in file or "_rjem_" in function:
        return "allocator"
    m = REGISTRY.search(file)
    if m:
        return CRATES.get(m.group(1), "other crates")
    if any(f"/{w}" in file for w in WORKSPACE):
        return "router"
    if file.startswith("./") or "libc.so" in file_fn:
        if re.search(r"malloc|free|realloc", function):
            return "allocator"
        return "libc (memcpy, clock, syscall stubs)"
    # The standard library's code: by the type or function it was instantiated for.
    inner = re.sub(r"^(<|core::ptr::drop_in_place<|alloc::[a-z_:]+<)+", "", function)
    for prefix, component in PREFIXES:
        if inner.startswith(prefix):
            return component
    return "std (unattributed)"


def without_open_calls(path: str) -> str:
    """The profile without its `calls=0` edges, written to a temporary file.

    A dump made after `callgrind_control -z` records each call that was on the stack when
    the counts were zeroed (the thread's start, the runtime's loop) as made zero times with
    everything since as its cost, which callgrind_annotate then counts as the caller's own.
    Self costs do not need call edges, so those are dropped.
    """
    kept = []
    with open(path, encoding="utf-8", errors="replace") as f:
        skip = False
        for line in f:
            if skip:
                skip = False
                continue
            if line.startswith("calls=0 "):
                # The cost line that follows goes too. The `cfn=`/`cfi=` lines before it
                # stay: they may be where a compressed name is defined for later lines.
                skip = True
                continue
            kept.append(line)
    tmp = tempfile.NamedTemporaryFile("w", suffix=".out", delete=False, encoding="utf-8")
    with tmp:
        tmp.writelines(kept)
    return tmp.name


def self_costs(path: str) -> Counter:
    """Self cost of every function of one callgrind output."""
    cleaned = without_open_calls(path)
    try:
        out = subprocess.run(
            ["callgrind_annotate", "--inclusive=no", "--auto=no", "--threshold=100", cleaned],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(cleaned)
    costs: Counter = Counter()
    table = False
    for line in out.splitlines():
        if line.strip().endswith("file:function"):
            table = True
            continue
        m = LINE.match(line) if table else None
        if m:
            costs[m.group(2)] += int(m.group(1).replace(",", ""))
    return costs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("n1", type=int)
    parser.add_argument("file1")
    parser.add_argument("n2", type=int)
    parser.add_argument("file2")
    parser.add_argument("--top", type=int, default=0)
    args = parser.parse_args()
    if args.n2 <= args.n1:
        print("components.py: N2 must be larger than N1", file=sys.stderr)
        return 2
    a, b = self_costs(args.file1), self_costs(args.file2)
    n = args.n2 - args.n1
    per_fn = {k: (b[k] - a.get(k, 0)) / n for k in set(a) | set(b)}
    by_component: Counter = Counter()
    for fn, cost in per_fn.items():
        by_component[classify(fn)] += cost
    total = sum(by_component.values())
    for component, cost in sorted(by_component.items(), key=lambda kv: -kv[1]):
        if abs(cost) < 0.5:
            continue
        print(f"  {component:<38} {cost:>9,.0f}  {100 * cost / total:5.1f} %")
    print(f"  {'total':<38} {total:>9,.0f}")
    if args.top:
        print(f"  the {args.top} most expensive functions (self cost per request):")
        for fn, cost in sorted(per_fn.items(), key=lambda kv: -kv[1])[: args.top]:
            print(f"    {cost:>8,.0f}  [{classify(fn)}] {fn[:140]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
