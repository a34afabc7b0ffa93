"""Fixtures of test_lightbulb.py: the real ``lightbulb`` and ``router`` binaries on free
loopback ports, and small Python model servers behind the router.

- :class:`Service` runs a workspace binary with ``127.0.0.1:0`` listeners and reads the
  addresses back from its listening line (``lightbulb listening grpc=.. http=..``,
  ``router listening proxy=.. admin=..``), waiting for it with a deadline. Its stderr goes
  to a file that is printed when it fails to start.
- :class:`Upstream` is a threaded ``http.server`` on ``127.0.0.1:0`` that answers every
  request with JSON naming itself and echoing what it received.
- :func:`wait_until` is the only way these tests wait: bounded polling of a condition.

The binaries are ``$LIGHTBULB_BIN`` / ``$ROUTER_BIN`` when set, else ``target/debug/``
of the workspace (``cargo build --workspace --bins``).
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import pytest

REPO = Path(__file__).resolve().parents[2]
#: How long any one thing may take before a test fails (the machine may be busy building).
DEADLINE = 30.0
OBJECTIVE = "ContinueWatchingRanking"
#: The objective's cache TTL: far longer than any test runs, so "within the TTL" holds.
CACHE_TTL_MS = 600_000
RULE_SET_VERSION = 3


def binary(name: str, env_override: str) -> Path:
    """The path of a workspace binary, or a test failure saying how to build it."""
    path = Path(os.environ.get(env_override) or REPO / "target" / "debug" / name)
    if not path.is_file():
        pytest.fail(f"{path} is missing: build it with `cargo build --workspace --bins` (or set ${env_override})")
    return path


def wait_until(what: str, condition: Callable[[], bool], deadline: float = DEADLINE) -> None:
    """Polls ``condition`` until it holds; fails the test after ``deadline`` seconds."""
    give_up = time.monotonic() + deadline
    pause = threading.Event()
    while not condition():
        if time.monotonic() > give_up:
            pytest.fail(f"timed out after {deadline}s waiting until {what}")
        pause.wait(0.02)


def http_get(url: str, timeout: float = 5.0) -> Tuple[int, str]:
    """``GET url``: status and body text (error statuses are returned, not raised)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.read().decode()


def metric_value(text: str, name: str, labels: Mapping[str, str]) -> float:
    """The sum of the Prometheus samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    pattern = re.compile(r"^" + re.escape(name) + r"(\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)$")
    for line in text.splitlines():
        match = pattern.match(line)
        if not match:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group("labels") or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group("value"))
    return total


class Service:
    """A running workspace binary whose listeners are on ports the OS chose."""

    def __init__(self, name: str, argv: Sequence[str], listening: str, keys: Sequence[str]) -> None:
        self.name = name
        self._stderr = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        self._lines: "queue.Queue[Optional[str]]" = queue.Queue()
        # Keeps draining stdout for the life of the process, so it never blocks on a pipe.
        threading.Thread(target=self._read_stdout, daemon=True).start()
        self.addrs = self._wait_for_listening(listening, keys)

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def _wait_for_listening(self, listening: str, keys: Sequence[str]) -> Dict[str, str]:
        give_up = time.monotonic() + DEADLINE
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, give_up - time.monotonic()))
            except queue.Empty:
                output = self.stderr()
                self.stop()
                pytest.fail(f"{self.name} printed no `{listening}` line within {DEADLINE}s:\n{output}")
            if line is None:
                code = self.process.wait()
                output = self.stderr()
                self.stop()
                pytest.fail(f"{self.name} exited ({code}) before listening:\n{output}")
            if line.startswith(listening):
                found = dict(re.findall(r"(\w+)=(\S+)", line))
                if all(key in found for key in keys):
                    return {key: found[key] for key in keys}

    def stderr(self) -> str:
        """What the process wrote on stderr so far."""
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def running(self) -> bool:
        """Whether the process has not exited."""
        return self.process.poll() is None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within the deadline; waits for it."""
        if self.running():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=DEADLINE)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._stderr.close()


class Lightbulb(Service):
    """``lightbulb --config FILE --grpc 127.0.0.1:0 --http 127.0.0.1:0``."""

    def __init__(self, config: Path) -> None:
        argv = [
            str(binary("lightbulb", "LIGHTBULB_BIN")),
            "--config", str(config),
            "--grpc", "127.0.0.1:0",
            "--http", "127.0.0.1:0",
            "--workers", "1",
        ]  # fmt: skip
        super().__init__("lightbulb", argv, "lightbulb listening", ["grpc", "http"])
        #: ``host:port`` of the gRPC server.
        self.grpc = self.addrs["grpc"]
        #: ``host:port`` of the HTTP API.
        self.http = self.addrs["http"]

    @property
    def grpc_url(self) -> str:
        """``http://host:port`` of the gRPC server, as clients are given it."""
        return f"http://{self.grpc}"

    def metric(self, name: str, **labels: str) -> float:
        """A metric of ``GET /metrics`` (summed over the samples matching ``labels``)."""
        status, text = http_get(f"http://{self.http}/metrics")
        assert status == 200, text
        return metric_value(text, name, labels)


class Router(Service):
    """``router --control-plane URL`` on ``127.0.0.1:0`` listeners, ready once it has
    applied Lightbulb's first snapshot."""

    def __init__(self, control_plane: str, snapshot_dir: Path) -> None:
        argv = [
            str(binary("router", "ROUTER_BIN")),
            "--control-plane", control_plane,
            "--snapshot-dir", str(snapshot_dir),
            "--control-plane-backoff-initial-ms", "20",
            "--control-plane-backoff-max-ms", "200",
            "--listen", "127.0.0.1:0",
            "--admin", "127.0.0.1:0",
            "--workers", "1",
        ]  # fmt: skip
        super().__init__("router", argv, "router listening", ["proxy", "admin"])
        #: ``http://host:port`` of the proxy.
        self.proxy_url = f"http://{self.addrs['proxy']}"
        #: ``http://host:port`` of the admin API.
        self.admin_url = f"http://{self.addrs['admin']}"


class Upstream:
    """A model server stand-in: answers every request with
    ``{"upstream": NAME, "method", "path", "routing_key", "request"}`` (``request`` is the
    JSON body it received), on ``127.0.0.1:0``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.requests: List[Dict[str, object]] = []
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                self._answer(b"")

            def do_POST(self) -> None:  # noqa: N802
                self._answer(self._body())

            def _body(self) -> bytes:
                if self.headers.get("transfer-encoding", "").lower() == "chunked":
                    chunks: List[bytes] = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("content-length") or 0))

            def _answer(self, body: bytes) -> None:
                try:
                    request: object = json.loads(body) if body else None
                except ValueError:
                    request = body.decode(errors="replace")
                seen = {
                    "upstream": upstream.name,
                    "method": self.command,
                    "path": self.path,
                    "routing_key": self.headers.get("x-routing-key"),
                    "request": request,
                }
                upstream.requests.append(seen)
                payload = json.dumps(seen).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        port = self._server.server_address[1]
        #: ``host:port`` it listens on.
        self.address = f"127.0.0.1:{port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stops serving and closes the listener."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(DEADLINE)


def rule_set(v1: str, v2: str) -> Dict[str, object]:
    """Country CA → model ``ranker-v2`` (cluster at ``v2``), everything else →
    ``ranker-v1`` (cluster at ``v1``); the objective's answers may be cached for
    :data:`CACHE_TTL_MS`."""
    return {
        "version": RULE_SET_VERSION,
        "clusters": {
            "ranker-v1": {"endpoints": [v1]},
            "ranker-v2": {"endpoints": [v2]},
        },
        "routes": {
            "ranker-v1": {"cluster": "ranker-v1"},
            "ranker-v2": {"cluster": "ranker-v2"},
        },
        "models": {
            "ranker-v1": {"routing_key": "ranker-v1", "version": "1", "input_type": "triton_v2"},
            "ranker-v2": {
                "routing_key": "ranker-v2",
                "version": "2",
                "input_type": "triton_v2",
                "parameters": {"top_k": "10"},
            },
        },
        "objectives": {
            OBJECTIVE: {
                "rules": [{"when": {"attributes": {"country": ["CA"]}}, "model": "ranker-v2"}],
                "default": "ranker-v1",
                "cache_ttl_ms": CACHE_TTL_MS,
            }
        },
    }


@dataclass
class Platform:
    """Lightbulb, a router following it, and one upstream per model."""

    lightbulb: Lightbulb
    router: Router
    upstreams: Dict[str, Upstream]


def _write_rules(directory: Path, rules: Mapping[str, object]) -> Path:
    path = directory / "rules.json"
    path.write_text(json.dumps(rules, indent=2))
    return path


@pytest.fixture(scope="module")
def lightbulb_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """Upstreams ``ranker-v1`` and ``ranker-v2``, Lightbulb on a rule set routing to them,
    and a router following Lightbulb's ``RoutingConfig.Watch``, ready (``/readyz`` 200)."""
    directory = tmp_path_factory.mktemp("platform")
    upstreams = {name: Upstream(name) for name in ("ranker-v1", "ranker-v2")}
    started: List[Service] = []
    try:
        rules = rule_set(upstreams["ranker-v1"].address, upstreams["ranker-v2"].address)
        lightbulb = Lightbulb(_write_rules(directory, rules))
        started.append(lightbulb)
        router = Router(lightbulb.grpc_url, directory / "router-snapshot")
        started.append(router)
        wait_until(
            "the router has applied Lightbulb's snapshot (/readyz 200)",
            lambda: http_get(f"{router.admin_url}/readyz")[0] == 200,
        )
        yield Platform(lightbulb, router, upstreams)
    finally:
        for service in reversed(started):
            service.stop()
        for upstream in upstreams.values():
            upstream.stop()


@pytest.fixture
def lone_lightbulb(tmp_path: Path) -> Iterator[Lightbulb]:
    """A Lightbulb of its own, for a test that stops it (the clusters are never called)."""
    lightbulb = Lightbulb(_write_rules(tmp_path, rule_set("127.0.0.1:9", "127.0.0.1:9")))
    try:
        yield lightbulb
    finally:
        lightbulb.stop()
