"""A real local Ray cluster for tests: `ray start --head` plus worker nodes, each its own `ray start --block`
process group on free ports with its own temp dir, so several clusters (xdist workers) never meet and
stopping one kills exactly its processes (`ray stop` would stop every cluster on the machine).

Resources are limited so 2 cores are not oversubscribed: the head offers `head_cpus` (default 1) CPUs,
each worker node its own `num_cpus` (default 1), with a 100 MB object store each.

Use from a test module with `pytest_plugins = ["tests.ray_cluster"]` and ask for `ray_cluster` (module
scope: one head per module, worker nodes added by the test with `add_worker()`; all stopped after the
module). Skipped with the reason where Ray is not installed (`uv sync --extra scale`)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port

OBJECT_STORE_BYTES = 100 * 1024 * 1024
# Ray 2.60 turns token authentication on once ~/.ray/auth_token exists (any local `ray.init()` writes it),
# and nodes and drivers then disagree on the token: these clusters are private to the test, so none.
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def _session_members(sid: int) -> list[int]:
    """Processes of session `sid` (from /proc: the sixth field of /proc/PID/stat, after the command)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended while being read
        if int(fields[3]) == sid:
            members.append(int(stat.parent.name))
    return members


def _ray_binary() -> str | None:
    beside = Path(sys.executable).with_name("ray")
    return str(beside) if beside.exists() else shutil.which("ray")


class RayCluster:
    """One head node and any number of worker nodes on this machine."""

    def __init__(self, binary: str, head_cpus: int = 1) -> None:
        self.binary = binary
        # short: Ray's unix sockets live below it (107-byte limit)
        self.temp_root = Path(tempfile.mkdtemp(prefix="awo-ray-", dir="/tmp"))
        self.nodes: list[subprocess.Popen[bytes]] = []
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.head_cpus = head_cpus
        for attempt in range(3):  # a node can time out during start-up on a loaded machine: start it again
            self._start(["--head", f"--port={self.port}", "--include-dashboard=false"], head_cpus)
            try:
                self.wait_for_nodes(1)
                return
            except (RuntimeError, TimeoutError):
                self.kill_node(len(self.nodes) - 1)
                if attempt == 2:
                    raise
                self.nodes.pop()

    def _start(self, role: list[str], num_cpus: int) -> subprocess.Popen[bytes]:
        n = len(self.nodes)
        low = 20000 + (os.getpid() % 200) * 150 + n * 30
        ports = [
            f"--node-manager-port={free_port()}",
            f"--object-manager-port={free_port()}",
            f"--min-worker-port={low}",
            f"--max-worker-port={low + 29}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
        ]
        if "--head" in role:
            ports.append(f"--ray-client-server-port={free_port()}")
        log = (self.temp_root / f"node-{n}.log").open("wb")
        process = subprocess.Popen(
            [
                self.binary,
                "start",
                *role,
                *ports,
                "--node-ip-address=127.0.0.1",
                f"--num-cpus={num_cpus}",
                f"--object-store-memory={OBJECT_STORE_BYTES}",
                f"--temp-dir={self.temp_root / f'n{n}'}",
                "--disable-usage-stats",
                "--block",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: raylet, GCS and workers die with it
            env={**os.environ, **RAY_ENV},
        )
        self.nodes.append(process)
        return process

    def add_worker(self, num_cpus: int = 1) -> int:
        """Start a worker node joined to the head; its index for `kill_node`. A node that exits during
        start-up (Ray's "timed out during startup" on a loaded machine) is started again, twice at most."""
        for attempt in range(3):
            process = self._start([f"--address={self.address}"], num_cpus)
            try:
                self.wait_for_nodes(sum(1 for p in self.nodes if p.poll() is None), timeout_s=300.0)
            except (RuntimeError, TimeoutError):
                if process.poll() is None or self.nodes[0].poll() is not None or attempt == 2:
                    raise
            if process.poll() is None:
                return len(self.nodes) - 1
        raise RuntimeError(f"a Ray worker node did not stay up; logs in {self.temp_root}")

    def alive_nodes(self) -> int:
        """Nodes the cluster itself reports alive (asked from a separate Python: no driver here)."""
        probe = subprocess.run(
            [
                sys.executable,
                "-c",
                f"import ray; ray.init(address={self.address!r}, log_to_driver=False); "
                "print(sum(1 for n in ray.nodes() if n['Alive']))",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, **RAY_ENV},
        )
        counts = [line for line in probe.stdout.splitlines() if line.strip().isdigit()]
        return int(counts[-1]) if probe.returncode == 0 and counts else 0

    def wait_for_nodes(self, n: int, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in self.nodes[:1]):
                raise RuntimeError(f"the Ray head exited; see {self.temp_root / 'node-0.log'}")
            if self.nodes[-1].poll() is not None:
                raise RuntimeError(f"a Ray node exited during start-up; see {self.temp_root}")
            if self.alive_nodes() >= n:
                return
            time.sleep(1.0)
        raise TimeoutError(f"{n} Ray nodes not alive after {timeout_s:.0f} s; logs in {self.temp_root}")

    def kill_node(self, index: int) -> None:
        """Kill a node's whole process group at once (raylet, its workers and the tasks they run), as a
        machine that dies would."""
        process = self.nodes[index]
        # The node is its session's leader; Ray's workers put themselves in process groups of their own
        # but stay in the session, so the session is what dies with the machine.
        for pid in [process.pid, *_session_members(process.pid)]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        process.wait(timeout=30)

    def stop(self) -> None:
        for index in reversed(range(len(self.nodes))):
            self.kill_node(index)
        shutil.rmtree(self.temp_root, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[RayCluster]:
    try:
        import ray  # noqa: F401
    except ImportError:
        pytest.skip("Ray is not installed (uv sync --extra scale): the scale-out tests need a real cluster")
    binary = _ray_binary()
    if binary is None:
        pytest.skip("the `ray` command is not on PATH beside this Python")
    with pytest.MonkeyPatch.context() as patch:  # the test's drivers (awo subprocesses) inherit it
        for name, value in RAY_ENV.items():
            patch.setenv(name, value)
        cluster = RayCluster(binary)
        try:
            yield cluster
        finally:
            cluster.stop()
