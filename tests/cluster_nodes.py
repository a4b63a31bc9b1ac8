"""A real multi-node Ray cluster on this machine: `ray start --head` and further `ray start
--address` nodes, each with its own resources, ports and temp dir, token auth on.

Every node gets its own ports (two agents on one machine would fight over Ray's fixed
defaults) and worker-port range; `kill()` SIGKILLs one node's processes only, as losing
that machine would.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

RAY = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Node:
    name: str
    temp_dir: Path
    raylet_pid: int | None = None
    processes: list[int] = field(default_factory=list)


class LocalCluster:
    """Start with `head()`, add nodes with `add_node()`, end with `shutdown()`."""

    WORKER_PORTS_PER_NODE = 200

    def __init__(self, root: Path):
        self.root = Path(root)
        self.token_file = self.root / "auth_token"
        self.token_file.write_text(secrets.token_hex(32))
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("RAY_ADDRESS", "RAY_AUTH", "RAY_JOB_CONFIG", "RAY_GCS_SERVER_PORT"))}
        self.env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.token_file),
                        RAY_USAGE_STATS_ENABLED="0",
                        # as `ray start` from an activated venv: a job's `python` is this one
                        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
        self.nodes: list[Node] = []
        self.gcs_port = free_port()
        self.dashboard_port = free_port()
        # below the ephemeral range (free_port) and above the worker ports of a default Ray (10002-19999)
        self._next_worker_port = 20000 + (os.getpid() % 25) * 500

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _ports(self) -> list[str]:
        low = self._next_worker_port
        self._next_worker_port += self.WORKER_PORTS_PER_NODE
        return ["--node-manager-port", str(free_port()), "--object-manager-port", str(free_port()),
                "--metrics-export-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port()),
                "--dashboard-agent-grpc-port", str(free_port()), "--runtime-env-agent-port", str(free_port()),
                "--min-worker-port", str(low), "--max-worker-port", str(low + self.WORKER_PORTS_PER_NODE - 1)]

    def _start(self, name: str, args: list[str]) -> Node:
        # Ray caps unix socket paths at 107 bytes: keep temp dirs short, under /tmp.
        temp_dir = Path(f"/tmp/pal-{os.getpid()}-{name}")
        node = Node(name, temp_dir)
        started = subprocess.run([RAY, "start", *args, "--temp-dir", str(temp_dir), "--disable-usage-stats",
                                  *self._ports()], env=self.env, capture_output=True, text=True, timeout=120)
        if started.returncode != 0:
            self.nodes.append(node)  # whatever it left running goes at shutdown
            raise RuntimeError(f"ray start for node {name} failed ({started.returncode}):\n"
                               f"{started.stdout[-3000:]}\n{started.stderr[-3000:]}")
        ours = [p for p in self._raylets() if any(str(temp_dir) + "/" in part for part in p.info["cmdline"] or [])]
        node.raylet_pid = ours[0].pid if ours else None
        self.nodes.append(node)
        return node

    def head(self, num_cpus: int = 0) -> Node:
        return self._start("head", ["--head", "--port", str(self.gcs_port), "--num-cpus", str(num_cpus),
                                    "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port),
                                    "--include-dashboard", "true", "--ray-client-server-port", str(free_port())])

    def add_node(self, name: str, num_cpus: int) -> Node:
        return self._start(name, ["--address", self.gcs_address, "--num-cpus", str(num_cpus)])

    def wait_for_cpus(self, cpus: float, timeout: float = 60.0) -> None:
        """Until the cluster's alive nodes hold `cpus` CPUs (a node registers a few seconds after its start)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = subprocess.run([RAY, "status", "--address", self.gcs_address], env=self.env,
                                    capture_output=True, text=True, timeout=30)
            for line in result.stdout.splitlines():
                if line.strip().endswith("CPU") and "/" in line:
                    if float(line.split("/")[1].split()[0]) >= cpus:
                        return
            time.sleep(1.0)
        raise TimeoutError(f"the cluster did not reach {cpus} CPUs within {timeout} s")

    @staticmethod
    def _raylets() -> list[psutil.Process]:
        found = []
        for process in psutil.process_iter(["name", "cmdline"]):
            try:
                if process.info["name"] == "raylet" or any("raylet/raylet" in part for part in process.info["cmdline"] or []):
                    found.append(process)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return found

    def node_processes(self, node: Node) -> list[psutil.Process]:
        """Every process of `node`: its raylet and what it started, plus anything naming its temp dir."""
        found: dict[int, psutil.Process] = {}
        if node.raylet_pid and psutil.pid_exists(node.raylet_pid):
            raylet = psutil.Process(node.raylet_pid)
            found[raylet.pid] = raylet
            for child in raylet.children(recursive=True):
                found[child.pid] = child
        marks = [str(node.temp_dir) + "/"] + ([f":{self.gcs_port}"] if node.name == "head" else [])
        for process in psutil.process_iter(["cmdline"]):
            try:
                # the head's GCS, dashboard, monitor and client server name the GCS address
                if any(mark in part for part in process.info["cmdline"] or [] for mark in marks):
                    found[process.pid] = process
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return list(found.values())

    def kill(self, node: Node) -> int:
        """SIGKILL every process of `node` at once, as a machine lost to a power cut; returns how many."""
        processes = self.node_processes(node)
        for process in processes:
            try:
                process.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(processes, timeout=10)
        return len(processes)

    def shutdown(self) -> None:
        for node in reversed(self.nodes):
            self.kill(node)
        for node in self.nodes:
            subprocess.run(["rm", "-rf", str(node.temp_dir)], check=False)
        self.nodes.clear()
