"""The quickstart (``scripts/dev.sh``) as a new user meets it: it starts the whole platform,
every request it prints works and shows what it says, a config change through the API is
seen by the next requests, and Ctrl-C (SIGINT to the script) stops every process it
started.

The script runs with ``--random-ports --debug --no-build`` (the debug binaries the other
tests use, on ports the kernel picks).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import DEADLINE, REPO, wait_until

# Starting five processes and the Python clients' imports take a few seconds; the bound only
# turns a hang into a failure.
START_DEADLINE = 120.0


def children(pid: int) -> list[int]:
    """The direct children of ``pid``."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


class Quickstart:
    """A running ``scripts/dev.sh`` and the commands it printed."""

    def __init__(self, log_dir: Path) -> None:
        self.out = log_dir / "dev.out"
        with self.out.open("wb") as out:
            self.popen = subprocess.Popen(
                ["bash", "scripts/dev.sh", "--random-ports", "--debug", "--no-build"],
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def up() -> bool:
            if self.popen.poll() is not None:
                raise AssertionError(f"dev.sh exited ({self.popen.returncode}):\n{self.text()}")
            return "Ctrl-C to stop." in self.text()

        wait_until("dev.sh prints its requests", up, START_DEADLINE)
        printed = self.text().split("The platform is up.", 1)[1].split("Ctrl-C to stop.", 1)[0]
        self.commands = [
            line.strip() for line in printed.splitlines() if line.startswith("  ") and not line.strip().startswith("#")
        ]
        export = next(c for c in self.commands if c.startswith("export LIGHTBULB_TOKEN="))
        self.env = dict(os.environ, LIGHTBULB_TOKEN=export.split("=", 1)[1])

    def text(self) -> str:
        return self.out.read_text(errors="replace")

    def command(self, *words: str) -> str:
        """The one printed command containing every one of ``words``."""
        found = [c for c in self.commands if all(w in c for w in words)]
        assert found, f"no printed command with {words}:\n" + "\n".join(self.commands)
        return found[0]

    def run(self, command: str) -> str:
        """Runs a printed command as a user would paste it; its output."""
        done = subprocess.run(
            ["bash", "-c", command], cwd=REPO, env=self.env, capture_output=True, text=True, timeout=DEADLINE
        )
        assert done.returncode == 0, f"{command}\nexit {done.returncode}\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
            try:
                self.popen.wait(timeout=DEADLINE)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory):
    qs = Quickstart(tmp_path_factory.mktemp("quickstart"))
    try:
        yield qs
    finally:
        qs.stop()


def test_lightbulb_resolves_over_http_and_over_grpc_reflection(quickstart: Quickstart) -> None:
    answer = json.loads(quickstart.run(quickstart.command("curl", "/v1/resolve")))
    assert answer["routingKey"] in ("ranker-v1", "ranker-v2"), answer
    assert answer["objectiveConfig"]["objective"] == "ContinueWatchingRanking"
    answer = json.loads(quickstart.run(quickstart.command("resolve_grpc.py")))
    assert answer["routingKey"] == "ranker-v1", answer


def test_the_real_clients_reach_the_version_their_key_routes_to(quickstart: Quickstart) -> None:
    out = quickstart.run(quickstart.command("triton_infer.py grpc", "ranker-v2"))
    assert "version 2" in out and "OUTPUT0 = [2.0, 4.0, 6.0, 8.0]" in out, out
    out = quickstart.run(quickstart.command("openai_stream.py", "ranker-v2"))
    assert "ranker-v2-a" in out, out
    chunks = int(out.rsplit("(", 1)[1].split()[0])
    assert chunks > 1, out
    out = json.loads(quickstart.run(quickstart.command("curl", "/v2/models/ranker/infer")))
    assert out["model_version"] == "1" and out["outputs"][0]["data"] == [2.0, 4.0, 6.0], out
    out = json.loads(quickstart.run(quickstart.command("curl", "x-routing-key: nope")))
    assert out["error"]["code"] == "unknown_routing_key", out


def test_a_config_change_through_the_api_is_seen_by_the_next_requests(quickstart: Quickstart) -> None:
    before = quickstart.command("triton_infer.py http", "ranker-v1")
    # The printed order: the request, the change, the same request again.
    assert quickstart.commands.index(before) < quickstart.commands.index(quickstart.command("-X PUT"))
    assert "version 1" in quickstart.run(before)
    change = json.loads(quickstart.run(quickstart.command("-X PUT", "/v1/routes/ranker-v1")))
    assert change["version"] == 2, change
    history = json.loads(quickstart.run(quickstart.command("/v1/config/history")))
    assert history["current"] == 2, history
    # The router follows Lightbulb's Watch stream: poll the same printed request until it
    # lands on version 2 (bounded).
    seen: list[str] = []

    def moved() -> bool:
        seen.append(quickstart.run(before))
        return "version 2" in seen[-1]

    wait_until(f"ranker-v1 is served by version 2 (last: {seen[-1:]})", moved)


def test_the_router_shows_its_clusters_and_metrics(quickstart: Quickstart) -> None:
    clusters = json.loads(quickstart.run(quickstart.command("/clusters")))
    names = {c["name"] for c in clusters["clusters"]}
    assert {"ranker-v1", "ranker-v2"} <= names, clusters

    def all_healthy() -> bool:
        state = json.loads(quickstart.run(quickstart.command("/clusters")))
        return all(e["health"] == "healthy" for c in state["clusters"] for e in c["endpoints"])

    wait_until("the health checks find every demo server ready", all_healthy)
    metrics = quickstart.run(quickstart.command("/metrics"))
    assert "router_requests_total{" in metrics, metrics


def test_ctrl_c_stops_every_process_it_started(tmp_path: Path) -> None:
    qs = Quickstart(tmp_path)
    started = children(qs.popen.pid)
    assert len(started) >= 5, f"expected 3 demo servers, Lightbulb and the router: {started}"
    work = qs.text().split("Logs and the store are in ", 1)[1].split(" ", 1)[0]
    qs.stop()
    assert qs.popen.returncode is not None, "dev.sh did not exit on SIGINT"
    give_up = time.monotonic() + DEADLINE
    while any(alive(p) for p in started):
        assert time.monotonic() < give_up, f"still running after Ctrl-C: {[p for p in started if alive(p)]}"
        time.sleep(0.05)
    assert not Path(work).exists(), f"{work} left behind"
