"""The cluster path's resource rules on real Ray clusters started on this machine.

- From zero worker nodes: a 0-CPU head whose autoscaler adds nodes for the jobs it is given
  (Ray's fake multi-node provider, tests/fake_own_dirs.py: real raylets on this machine, started
  and stopped by Ray's own autoscaler as a cloud provider's would be). `palimpsest submit` of a
  continual job and of a 2-trial search each wait for the autoscaler, then finish; a job larger
  than every node type is refused in seconds; a job the autoscaler does not serve in
  `scaling.wait_timeout_s` stops with the reason.
- A head declaring 2 GPUs: 1-GPU rl trials run two at once, a 3-GPU job is refused.
- A head whose `python` cannot import palimpsest: `submit` says so instead of "submitted".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster_nodes import LocalCluster

ROOT = Path(__file__).resolve().parents[1]
PALIMPSEST = [sys.executable, "-m", "palimpsest.cli"]
TINY = ["--set", "methods=[replay]", "--set", "training.steps=20", "--set", "training.log_every=10"]
# One worker type per test, each with its own custom resource that the test's job asks for: each job
# finds no node of its type up and waits for the autoscaler, whatever the tests before it started.
# (Nodes stay up meanwhile: a fake node removed mid-job would take the head's runtime_resources with
# it, as fake nodes share the head's session folder.)
POOLS = ("pool_a", "pool_b", "pool_c")

pytestmark = pytest.mark.cluster  # each test on a Ray cluster of its own (tests/cluster_nodes.py)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    nodes = LocalCluster(tmp_path_factory.mktemp("autoscaling"))
    try:
        nodes.autoscaling_head({pool: {"resources": {"CPU": 2, pool: 2}, "max_workers": 1} for pool in POOLS},
                               idle_timeout_minutes=10)
        yield nodes
    finally:
        nodes.shutdown()


def _env(cluster: LocalCluster, home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH", "RAY_API_SERVER"))}
    env.update(HOME=str(home), RAY_AUTH_TOKEN_PATH=str(cluster.token_file))
    return env


def _submit(cluster, tmp_path, args: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    (tmp_path / "storage").mkdir(exist_ok=True)
    started = time.monotonic()
    result = subprocess.run(PALIMPSEST + ["submit", *args, "--address", cluster.dashboard_url, "--storage",
                                          str(tmp_path / "storage")],
                            cwd=ROOT, env=_env(cluster, tmp_path), capture_output=True, text=True, timeout=900)
    return result, time.monotonic() - started


def _in(pool: str) -> list[str]:
    return ["--set", f"scaling.resources_per_worker={{{pool}: 1}}"]


def test_a_job_stops_waiting_after_scaling_wait_timeout_s_with_the_reason(cluster, tmp_path):
    result, took = _submit(cluster, tmp_path, ["jobs/quickstart.yaml", *TINY, *_in("pool_c"),
                                               "--set", "scaling.wait_timeout_s=1"])
    log = result.stdout + result.stderr
    assert result.returncode == 2, log[-3000:]
    assert "error: jobs/quickstart.yaml: scaling.wait_timeout_s: waited 1 s for the autoscaler to start nodes for 2 × (1 CPU, 1 " \
           "pool_c); the cluster still holds nothing." in log, log[-3000:]
    assert "`ray status` on the head" in log and "Traceback" not in log


def test_a_job_waits_for_the_autoscaler_then_runs(cluster, tmp_path):
    result, _ = _submit(cluster, tmp_path, ["jobs/quickstart.yaml", *TINY, *_in("pool_a")])
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert "waiting for the autoscaler to start nodes for 2 × (1 CPU, 1 pool_a)" in log, log[-4000:]
    assert "(scaling.wait_timeout_s)" in log and "the autoscaler started the nodes after" in log
    assert "results after 60 steps" in log
    # Ray Train's workers held what the job asked (scaling.worker_resources()), as Ray's state API recorded
    query = ("import json, ray.util.state as s; print(json.dumps([b['unit_resources'] for pg in "
             f"s.list_placement_groups(address='{cluster.dashboard_url}', detail=True) for b in pg.bundles]))")
    found = subprocess.run([sys.executable, "-c", query], env={**_env(cluster, tmp_path), "RAY_AUTH_MODE": "token"},
                           capture_output=True, text=True, timeout=60)
    assert found.returncode == 0, found.stderr[-2000:]
    assert {"CPU": 1.0, "pool_a": 1.0} in json.loads(found.stdout.strip().splitlines()[-1]), found.stdout + found.stderr


def test_a_two_trial_search_waits_for_the_autoscaler_then_runs(cluster, tmp_path):
    result, _ = _submit(cluster, tmp_path, ["jobs/tune/continual_ewc.yaml", "--tune", *_in("pool_b"),
                                            "--set", "tune.num_samples=2",
                                            "--set", "training.steps=10", "--set", "training.log_every=10",
                                            "--set", "eval.eval_every=10", "--set", "stream.num_tasks=2"])
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert "waiting for the autoscaler to start nodes for 1 × (1 CPU, 1 pool_b)" in log, log[-4000:]
    assert "the autoscaler started the nodes after" in log
    # sized on what the autoscaler's node types reach (2 pool_b), not on the nodes up at first
    assert "2 trial(s) at once" in log


def test_a_job_no_node_type_holds_is_refused_in_seconds(cluster, tmp_path):
    result, took = _submit(cluster, tmp_path, ["jobs/quickstart.yaml", *TINY, "--set", "scaling.cpus_per_worker=4"])
    log = result.stdout + result.stderr
    assert result.returncode == 2, log[-3000:]
    assert "scaling.num_workers × scaling.cpus_per_worker: each job needs 2 × (4 CPU); no node type of the " \
           "cluster's autoscaler holds (4 CPU) (largest node type: pool_a, 2 CPU, 2 pool_a)" in log, log[-3000:]
    assert took < 60 and "Traceback" not in log


def test_submit_to_a_head_that_cannot_import_palimpsest_fails_at_once_with_the_fix(tmp_path):
    """A head started from a shell without the venv on PATH: the job's `python` is the system's, which lacks our
    dependencies. `submit --no-wait` must not say "submitted"."""
    (tmp_path / "bare").mkdir()
    nodes = LocalCluster(tmp_path / "bare", venv_on_path=False)
    try:
        nodes.head(num_cpus=0)
        result, took = _submit(nodes, tmp_path, ["jobs/quickstart.yaml", *TINY, "--no-wait"])
    finally:
        nodes.shutdown()
    log = result.stdout + result.stderr
    assert result.returncode == 2, log[-3000:]
    assert "submitted" not in result.stdout
    assert "the cluster's Python cannot run palimpsest: ModuleNotFoundError: No module named" in log, log[-3000:]
    assert "source .venv/bin/activate && ray start --head" in log and "Traceback" not in log


@pytest.fixture(scope="module")
def two_gpus(tmp_path_factory):
    """A head declaring 3 CPUs and 2 GPUs (this machine has none: Ray counts them all the same)."""
    nodes = LocalCluster(tmp_path_factory.mktemp("gpus"))
    try:
        nodes.head(num_cpus=3, num_gpus=2)
        yield nodes
    finally:
        nodes.shutdown()


def _run(cluster: LocalCluster, tmp_path: Path, args: list[str]) -> subprocess.CompletedProcess:
    """`palimpsest run --address GCS` from this machine, as a driver joining the cluster."""
    return subprocess.run(PALIMPSEST + ["run", *args, "--address", cluster.gcs_address, "--out", str(tmp_path / "run")],
                          cwd=ROOT, env={**_env(cluster, tmp_path), "RAY_AUTH_MODE": "token"}, capture_output=True,
                          text=True, timeout=600)


def test_one_gpu_trials_run_two_at_once_on_two_gpus_and_the_third_waits(two_gpus, tmp_path):
    result = _run(two_gpus, tmp_path, [
        "jobs/rl/quick_cpu.yaml", "--set", "agents=[mlp]", "--set", "seeds=3", "--set", "parameters=null",
        "--set", "envs=[{id: palimpsest/EndlessTMaze-v0, params: {num_corridors: 1}, label: t}]",
        "--set", "budget.env_steps=8192", "--set", "ppo.num_gpus_per_learner=1",
        "--set", "evaluation={every: 1, episodes: 20, test_episodes: 20}"])
    log = result.stdout
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    # Tune reserves what RLlib asks for the trial: its learner's GPU with the trial's CPU
    assert "3 trials (1 agents × 1 environments × 3 seeds), each holding 1 × (1 CPU, 1 GPU); 2 at once on this " \
           "cluster (GPU bound)" in log, log[-3000:]
    spans = {}
    for s in range(3):  # Tune's own record of each trial: its first iteration's start, its last result
        rows = [json.loads(line) for line in (tmp_path / "run" / "ray" / "run" / f"mlp-t-s{s}" / "result.json")
                .read_text().splitlines()]
        spans[s] = (rows[0]["timestamp"] - rows[0]["time_this_iter_s"], rows[-1]["timestamp"])
    first_end = min(spans[0][1], spans[1][1])
    assert max(spans[0][0], spans[1][0]) < first_end, spans  # side by side
    assert spans[2][0] >= first_end - 1, spans  # (timestamps are whole seconds) the third waited for a GPU


def test_a_job_needing_more_gpus_than_the_cluster_has_is_refused_with_the_reason(two_gpus, tmp_path):
    result = _run(two_gpus, tmp_path, ["jobs/quickstart.yaml", *TINY, "--set", "scaling.num_workers=1",
                                       "--set", "scaling.use_gpu=true", "--set", "scaling.gpus_per_worker=3"])
    assert result.returncode == 2, (result.stdout + result.stderr)[-3000:]
    assert "scaling.num_workers × scaling.cpus_per_worker and gpus_per_worker: each job needs 1 × (1 CPU, 3 GPU), " \
           "but the Ray cluster's nodes hold (3 CPU, 2 GPU) and it has no autoscaler to add more" in result.stderr, \
        result.stderr[-3000:]
    assert not (tmp_path / "run").exists() and "Traceback" not in result.stderr
