"""Fixtures for the end-to-end tests with third-party clients.

They start the real binaries of the workspace (``target/debug``, or ``$CARGO_TARGET_DIR/debug``;
build them with ``cargo build --workspace --bins``) on 127.0.0.1 with ports the kernel picks
(``:0``), read each listening address from the process's first line, wait for readiness by
polling a health endpoint (bounded by ``DEADLINE``), and kill every process at teardown.

The platform these tests talk to (``platform`` fixture):

- demo-model instance ``ranker-v1-a`` serving model ``ranker`` version 1, and instance
  ``ranker-v2-b`` serving ``ranker`` version 2;
- a router on a rule set (written to a temp dir) with routing key ``ranker-v1`` -> cluster
  ``ranker-v1`` (instance A) and ``ranker-v2`` -> cluster ``ranker-v2`` (instance B), both
  ``protocol: auto`` so REST goes upstream over HTTP/1.1 and gRPC over h2c.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]

# A bound that turns a hang into a readable failure; never a timing assertion.
DEADLINE = 30.0

# The header the router routes on.
ROUTING_HEADER = "x-routing-key"
# The request body limit of the `ranker-small` route, in bytes.
SMALL_ROUTE_LIMIT = 65536


def binary(name: str) -> Path:
    """The workspace binary ``name`` from the debug build."""
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    path = target / "debug" / name
    if not path.is_file():
        pytest.fail(f"{path} is missing: run `cargo build --workspace --bins` first")
    return path


def wait_until(what: str, condition: Callable[[], bool], deadline: float = DEADLINE) -> None:
    """Polls ``condition`` every 20 ms until it holds; fails naming ``what`` after ``deadline`` s."""
    give_up = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > give_up:
            raise AssertionError(f"gave up after {deadline} s waiting until {what}")
        time.sleep(0.02)


def http_ok(url: str) -> bool:
    """Whether ``GET url`` answers 2xx (any failure is False)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return 200 <= resp.status < 300
    except (OSError, urllib.error.URLError):
        return False


@dataclass
class Process:
    """A started binary with its stdout and stderr in files."""

    name: str
    popen: subprocess.Popen
    stdout: Path
    stderr: Path

    def output(self) -> str:
        """Everything the process printed so far."""
        out = self.stdout.read_text(errors="replace") if self.stdout.exists() else ""
        err = self.stderr.read_text(errors="replace") if self.stderr.exists() else ""
        return f"--- {self.name} stdout ---\n{out}--- {self.name} stderr ---\n{err[-8000:]}"

    def wait_for_line(self, starts_with: str) -> str:
        """The first whole stdout line starting with ``starts_with``, waiting up to DEADLINE."""
        found: list[str] = []

        def seen() -> bool:
            if self.popen.poll() is not None:
                raise AssertionError(f"{self.name} exited ({self.popen.returncode})\n{self.output()}")
            text = self.stdout.read_text(errors="replace")
            found.extend(
                line for line in text.splitlines(keepends=True) if line.startswith(starts_with) and line.endswith("\n")
            )
            return bool(found)

        try:
            wait_until(f"{self.name} prints `{starts_with} ...`", seen)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.output()}") from None
        return found[0].strip()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within 5 s; always reaped."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


@dataclass
class Processes:
    """Starts binaries into ``log_dir`` and stops every one of them at teardown."""

    log_dir: Path
    started: list[Process] = field(default_factory=list)

    def start(self, name: str, args: list[str]) -> Process:
        """Starts workspace binary ``name`` with ``args``; ``name`` also names its log files."""
        label = f"{name}-{len(self.started)}"
        stdout = self.log_dir / f"{label}.stdout"
        stderr = self.log_dir / f"{label}.stderr"
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        env["NO_COLOR"] = "1"
        with stdout.open("wb") as out, stderr.open("wb") as err:
            popen = subprocess.Popen(
                [str(binary(name)), *args], stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env
            )
        process = Process(label, popen, stdout, stderr)
        self.started.append(process)
        return process

    def stop_all(self) -> None:
        for process in reversed(self.started):
            process.stop()


@dataclass
class DemoModel:
    """A running demo-model instance."""

    instance: str
    model: str
    version: str
    addr: str
    process: Process

    @property
    def url(self) -> str:
        return f"http://{self.addr}"

    def step(self) -> None:
        """Lets the instance's streamed completion send its next event (``--stepped-tokens``)."""
        req = urllib.request.Request(f"{self.url}/demo/step", method="POST", data=b"")
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 204, resp.status


@dataclass
class Router:
    """A running router."""

    proxy: str
    admin: str
    rules: Path
    process: Process

    @property
    def url(self) -> str:
        return f"http://{self.proxy}"


@dataclass
class Platform:
    """Two demo-model instances behind a router, and which key routes where."""

    router: Router
    # routing key -> the instance serving it
    routes: dict[str, DemoModel]


def start_demo_model(processes: Processes, instance: str, model: str, version: str) -> DemoModel:
    """Starts a demo-model instance serving ``model:version`` and waits until it is ready."""
    process = processes.start(
        "demo-model",
        ["--listen", "127.0.0.1:0", "--instance", instance, "--model", f"{model}:{version}", "--stepped-tokens"],
    )
    line = process.wait_for_line("demo-model ")
    addr = line.rsplit(" ", 1)[-1]
    demo = DemoModel(instance, model, version, addr, process)
    wait_until(f"{instance} is ready", lambda: http_ok(f"{demo.url}/v2/health/ready"))
    return demo


def start_router(processes: Processes, rules: dict, rules_dir: Path) -> Router:
    """Writes ``rules`` to ``rules_dir`` and starts a router on it; waits until ``/readyz`` is 200."""
    path = rules_dir / "rules.json"
    path.write_text(json.dumps(rules, indent=2))
    process = processes.start(
        "router", ["--config", str(path), "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--workers", "2"]
    )
    line = process.wait_for_line("router listening")
    words = dict(w.split("=", 1) for w in line.split() if "=" in w)
    router = Router(words["proxy"], words["admin"], path, process)
    wait_until("the router is ready", lambda: http_ok(f"http://{router.admin}/readyz"))
    return router


@pytest.fixture(scope="session")
def processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    """Every process the session starts; all are stopped at the end, whatever happened."""
    group = Processes(tmp_path_factory.mktemp("logs"))
    try:
        yield group
    finally:
        group.stop_all()


@pytest.fixture(scope="session")
def platform(processes: Processes, tmp_path_factory: pytest.TempPathFactory) -> Platform:
    """The router in front of ``ranker-v1-a`` (ranker 1) and ``ranker-v2-b`` (ranker 2)."""
    v1 = start_demo_model(processes, "ranker-v1-a", "ranker", "1")
    v2 = start_demo_model(processes, "ranker-v2-b", "ranker", "2")
    rules = {
        "clusters": {
            "ranker-v1": {"endpoints": [v1.addr], "protocol": "auto"},
            "ranker-v2": {"endpoints": [v2.addr], "protocol": "auto"},
        },
        "routes": {
            "ranker-v1": {"cluster": "ranker-v1"},
            "ranker-v2": {"cluster": "ranker-v2"},
            # The same model behind a request body limit (`max_request_body_bytes`).
            "ranker-small": {"cluster": "ranker-v1", "max_request_body_bytes": SMALL_ROUTE_LIMIT},
        },
    }
    router = start_router(processes, rules, tmp_path_factory.mktemp("rules"))
    return Platform(router, {"ranker-v1": v1, "ranker-v2": v2})
