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

from palimpsest.train.loop import HOLD_ENV

import tiers

RAY = str(Path(sys.executable).parent / "ray")


def node_ip() -> str:
    from ray._private.services import get_node_ip_address

    return get_node_ip_address()


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

    def __init__(self, root: Path, *, venv_on_path: bool = True):
        tiers.require_cluster_marker("a Ray cluster of its own (tests/cluster_nodes.py)")
        self.root = Path(root)
        self.token_file = self.root / "auth_token"
        self.token_file.write_text(secrets.token_hex(32))
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("RAY_ADDRESS", "RAY_AUTH", "RAY_JOB_CONFIG", "RAY_GCS_SERVER_PORT"))}
        self.env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.token_file),
                        RAY_USAGE_STATS_ENABLED="0",
                        # as `ray start` from an activated venv: a job's `python` is this one (or, without it,
                        # as from a shell where `python` is the system's)
                        PATH=os.pathsep.join(([str(Path(sys.executable).parent)] if venv_on_path else [])
                                             + [p for p in os.environ.get("PATH", "").split(os.pathsep)
                                                if p != str(Path(sys.executable).parent)]))
        # the training loop's test hook (palimpsest.train.loop._maybe_hold): the tests' jobs wait at a step they name
        self.hold = self.root / "hold"
        self.hold.mkdir()
        self.env[HOLD_ENV] = str(self.hold)
        self.nodes: list[Node] = []
        self.gcs_port = free_port()
        self.dashboard_port = free_port()
        # below the ephemeral range (free_port) and above the worker ports of a default Ray (10002-19999)
        self._next_worker_port = 20000 + (os.getpid() % 25) * 500

    def hold_at(self, task: int, step: int) -> None:
        """The next job to reach the top of (task, step), 0-based, waits there until `release()`."""
        for name in ("held", "release"):
            (self.hold / name).unlink(missing_ok=True)
        (self.hold / "at").write_text(f"{task} {step}\n")

    def wait_held(self, timeout: float = 240.0) -> None:
        deadline = time.monotonic() + timeout
        while not (self.hold / "held").exists():
            assert time.monotonic() < deadline, "the job never reached its hold"
            time.sleep(0.1)

    def release(self) -> None:
        (self.hold / "release").write_text("go\n")
        (self.hold / "at").unlink(missing_ok=True)

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

    def head(self, num_cpus: int = 0, num_gpus: int = 0) -> Node:
        """The head; num_gpus > 0 declares GPUs this machine does not have (Ray counts them all the same)."""
        return self._start("head", ["--head", "--port", str(self.gcs_port), "--num-cpus", str(num_cpus),
                                    "--num-gpus", str(num_gpus),
                                    "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port),
                                    "--include-dashboard", "true", "--ray-client-server-port", str(free_port())])

    def autoscaling_head(self, worker_types: dict[str, dict], *, idle_timeout_minutes: float = 1.0) -> Node:
        """A 0-CPU head whose autoscaler starts and stops fake nodes of `worker_types`
        (name → {"resources": {...}, "max_workers": n}, min_workers 0) on this machine: Ray's
        fake multi-node provider, the one Ray tests its own autoscaler with."""
        import yaml

        # the fake provider names its head node's type so
        types = {"ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0}}
        for name, node_type in worker_types.items():
            types[name] = {"resources": dict(node_type["resources"]), "node_config": {}, "min_workers": 0,
                           "max_workers": node_type.get("max_workers", 1)}
        config = {
            "cluster_name": f"fake-{os.getpid()}", "max_workers": sum(t["max_workers"] for t in types.values()),
            "idle_timeout_minutes": idle_timeout_minutes, "upscaling_speed": 1.0,
            # without gcs_address the fake nodes dial port 6379 and never join
            # (the node's own IP, as the head's processes name it: with 127.0.0.1 here Ray Train's placement-group
            # cleaner finds "multiple active Ray instances" at one port)
            # (tests/fake_own_dirs.py: Ray's fake provider, each node in a temp dir of its own)
            "provider": {"type": "external", "module": "fake_own_dirs.OwnDirsProvider",
                         "node_temp_prefix": f"/tmp/pal-{os.getpid()}-fake", "gcs_address": f"{node_ip()}:{self.gcs_port}",
                         "use_node_id_as_ip": True, "disable_node_updaters": True, "disable_launch_config_check": True},
            "available_node_types": types, "head_node_type": "ray.head.default",
            "auth": {}, "docker": {}, "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
            "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [], "setup_commands": [],
            "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
            "worker_start_ray_commands": [],
        }
        path = self.root / "autoscaling.yaml"
        path.write_text(yaml.safe_dump(config))
        self.env.update(AUTOSCALER_UPDATE_INTERVAL_S="1", RAY_FAKE_CLUSTER="1",
                        PYTHONPATH=os.pathsep.join([str(Path(__file__).parent)] + [p for p in [os.environ.get(
                            "PYTHONPATH")] if p]))
        return self._start("head", ["--head", "--port", str(self.gcs_port), "--num-cpus", "0",
                                    "--autoscaling-config", str(path),
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
            self.kill(node)  # (the head's marks include its GCS port, which the autoscaler's nodes name too)
        for node in self.nodes:
            subprocess.run(["rm", "-rf", str(node.temp_dir)], check=False)
        subprocess.run(f"rm -rf /tmp/pal-{os.getpid()}-fake*", shell=True, check=False)
        self.nodes.clear()
