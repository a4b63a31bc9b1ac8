"""The cluster path: cluster.yaml against Ray's own cluster-config schema, and `palimpsest
submit` to a real 2-node Ray cluster started on this machine (token auth on), through the
loss of a node in the middle of a job.

The cluster is its own: `ray start --head` (0 CPUs: drivers only, as cluster.yaml's head) and
`ray start --address` nodes with their own CPUs, ports and temp dirs (tests/cluster_nodes.py);
the CLI runs as a user would run it, in a subprocess.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml

from cluster_nodes import LocalCluster

ROOT = Path(__file__).resolve().parents[1]
PALIMPSEST = [sys.executable, "-m", "palimpsest.cli"]
# jobs/quickstart.yaml on a small budget: one method, 3 tasks of 40 steps, a line every 10
TINY = ["--set", "methods=[replay]", "--set", "training.steps=40", "--set", "training.log_every=10"]


def _open_to_the_world(rule: dict) -> bool:
    return any(r.get("CidrIp") == "0.0.0.0/0" for r in rule.get("IpRanges", [])) or \
        any(r.get("CidrIpv6") == "::/0" for r in rule.get("Ipv6Ranges", []))


def test_cluster_yaml_passes_rays_schema_and_keeps_the_cluster_closed():
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    typo = dict(prepared, max_worker=3)  # the schema refuses what it does not know: this check can fail
    with pytest.raises(jsonschema.ValidationError):
        validate_config(typo)

    # Instance types: a CPU head that trains nothing, an 8-GPU type and a 1-GPU type, bounded.
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("CPU") == 0 and not head["resources"].get("GPU")
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    assert sorted(t["resources"]["GPU"] for t in workers) == [1, 8]
    for node_type in workers:
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"] <= config["max_workers"]

    # Token authentication on every node; nothing turns it off.
    start = " ".join(config["head_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in start and "RAY_AUTH_MODE=token" in " ".join(config["worker_start_ray_commands"])
    assert "disabled" not in (ROOT / "cluster.yaml").read_text().split("RAY_AUTH_MODE", 1)[1]
    assert any(target.endswith(".ray/auth_token") for target in config["file_mounts"])
    # Dashboard and job server on the head's localhost only (Ray's launcher default is 0.0.0.0).
    assert "--dashboard-host=127.0.0.1" in start and "0.0.0.0" not in start
    # No rule open to the world except SSH.
    rules = config["provider"].get("security_group", {}).get("IpPermissions", [])
    for rule in rules:
        if _open_to_the_world(rule):
            assert (rule["IpProtocol"], rule["FromPort"], rule["ToPort"]) == ("tcp", 22, 22), rule
    # The project with a CUDA torch (not the CPU pin), and shared storage for run folders.
    setup = " ".join(config["setup_commands"])
    assert "torch==2.13.0" in setup and "download.pytorch.org/whl/cu" in setup
    assert "pip install" in setup and "/home/ubuntu/palimpsest" in setup and "/mnt/shared" in setup
    assert {".venv", "runs", ".git"} <= set(config["rsync_exclude"])


@pytest.fixture(scope="module")
def bucket(object_store):
    """An S3-compatible store (tests/object_store.py); its credentials are in every node's environment
    (tests/conftest.py), as an instance role would give them on a cloud."""
    return object_store


@pytest.fixture(scope="module")
def cluster(bucket, tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster")
    nodes = LocalCluster(root)
    try:
        nodes.head(num_cpus=0)
        nodes.second = nodes.add_node("a", num_cpus=2)
        nodes.wait_for_cpus(2)
        yield nodes
    finally:
        nodes.shutdown()


def _cli(args: list[str], env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(PALIMPSEST + args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _env(cluster: LocalCluster | None, home: Path, *, token: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH", "RAY_API_SERVER"))}
    env["HOME"] = str(home)  # no ~/.ray/auth_token of this machine's own
    if token:
        env["RAY_AUTH_TOKEN_PATH"] = str(cluster.token_file)
    return env


def _run_folder(stdout: str) -> str:
    line = next(line for line in stdout.splitlines() if line.startswith("run folder (on the cluster's storage): "))
    return line.split(": ", 1)[1].strip()


@pytest.fixture(scope="module")
def undisturbed(cluster, tmp_path_factory):
    """jobs/quickstart.yaml (small budget) submitted with the token: exit 0 and a finished run folder."""
    home = tmp_path_factory.mktemp("home")
    storage = tmp_path_factory.mktemp("storage")
    result = _cli(["submit", "jobs/quickstart.yaml", "--address", cluster.dashboard_url, "--storage", str(storage),
                   *TINY], _env(cluster, home, token=True))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result, Path(_run_folder(result.stdout)), storage, home


@pytest.mark.cluster
def test_submit_runs_the_quickstart_on_a_two_node_cluster_and_refuses_a_request_without_the_token(
        cluster, undisturbed, tmp_path):
    result, folder, storage, home = undisturbed
    assert "SUCCEEDED (exit 0)" in result.stdout
    assert "[palimpsest] replay · task 3/3 step 40/40" in result.stdout  # the job's log, streamed
    assert folder.parent == storage and folder.is_dir()
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["kind"] == "continual"
    assert len(summary["methods"]["replay"]["accuracy_matrix"]) == 3
    assert (folder / "report.md").is_file() and (folder / "checkpoints" / "replay" / "task-2").is_dir()
    listed = _cli(["jobs", "--address", cluster.dashboard_url], _env(cluster, home, token=True))
    assert listed.returncode == 0 and "SUCCEEDED" in listed.stdout and str(folder) in listed.stdout

    # Without the token: the CLI exits 2 with one line saying so, and submits nothing.
    before = sorted(storage.iterdir())
    refused = _cli(["submit", "jobs/quickstart.yaml", "--address", cluster.dashboard_url, "--storage", str(storage),
                    *TINY], _env(cluster, tmp_path, token=False))
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "requires its auth token" in refused.stderr and "Traceback" not in refused.stderr
    assert sorted(storage.iterdir()) == before
    # A wrong token: refused too.
    wrong = tmp_path / "wrong_token"
    wrong.write_text("0" * 64)
    refused = _cli(["jobs", "--address", cluster.dashboard_url, "--token-file", str(wrong)], _env(cluster, tmp_path,
                                                                                                  token=False))
    assert refused.returncode == 2 and "was refused" in refused.stderr
    # And the cluster itself, asked directly: 401 without a token, 403 with a wrong one, 200 with it.
    url = f"{cluster.dashboard_url}/api/jobs/"
    assert requests.get(url, timeout=10).status_code == 401
    assert requests.post(url, json={"entrypoint": "echo hi"}, timeout=10).status_code == 401
    assert requests.get(url, headers={"Authorization": "Bearer " + "0" * 64}, timeout=10).status_code == 403
    token = cluster.token_file.read_text().strip()
    assert requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10).status_code == 200


@pytest.mark.cluster
def test_a_job_survives_losing_its_node_during_the_second_task(cluster, undisturbed, bucket):
    """The node running both training workers dies (SIGKILL to all its processes) during task 2; a
    new node joins, Ray Train (FailureConfig) restarts the workers from the task-1 checkpoint in
    storage — a bucket here: the new node downloads it — and the job ends with the undisturbed
    run's accuracy matrix. The run folder is uploaded beside the checkpoints."""
    _, clean_folder, _, home = undisturbed
    env = _env(cluster, home, token=True)
    storage = bucket.uri("cluster", "runs")
    cluster.hold_at(task=1, step=10)  # the job waits after the line "task 2/3 step 10/40" until released
    # Submitted streaming its log; Ctrl-C once task 1 runs stops following, not the job.
    streaming = subprocess.Popen(PALIMPSEST + ["submit", "jobs/quickstart.yaml", "--address", cluster.dashboard_url,
                                               "--storage", storage, *TINY, "--set", "max_failures=2"],
                                 cwd=ROOT, env={**env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, start_new_session=True)
    seen = []
    for line in streaming.stdout:
        seen.append(line)
        if "task 1/3 step 10/40" in line:
            os.killpg(streaming.pid, signal.SIGINT)
            break
    rest, stderr = streaming.communicate(timeout=60)
    stdout = "".join(seen) + rest
    assert streaming.returncode == 130 and "stopped following; the job keeps running" in stderr, stdout + stderr
    job_id = stdout.split()[1]
    folder = _run_folder(stdout)
    name = folder.split("?")[0].rsplit("/", 1)[1]
    assert folder.startswith(f"s3://cluster/runs/{name}?endpoint_override=")

    cluster.wait_held()
    # the line the restart repeats reached the job's log (through node a's log monitor) before node a dies
    while "task 2/3 step 10/40" not in _cli(["logs", job_id, "--address", cluster.dashboard_url], env).stdout:
        pass
    killed = cluster.kill(cluster.second)
    assert killed >= 3  # its raylet, agents and the two training workers
    cluster.release()  # the restarted workers pass step 10 of task 2
    cluster.second = cluster.add_node("b", num_cpus=2)  # what an autoscaler does for a lost node

    finished = _cli(["logs", job_id, "--follow", "--address", cluster.dashboard_url], env)
    assert finished.returncode == 0, finished.stdout[-4000:]
    # The restarted workers redid task 2 from its start: its first line shows twice, same loss.
    again = [line.split("train_loss")[1].split()[0] for line in finished.stdout.splitlines()
             if "replay · task 2/3 step 10/40" in line]
    assert len(again) == 2 and again[0] == again[1], finished.stdout[-4000:]
    summary = json.loads(bucket.read(f"cluster/runs/{name}/summary.json"))
    clean = json.loads((clean_folder / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["storage"]["run_folder"] == folder
    assert summary["methods"]["replay"]["accuracy_matrix"] == clean["methods"]["replay"]["accuracy_matrix"]
    files = bucket.files(f"cluster/runs/{name}")
    assert sum(key.endswith("checkpoint_manifest.json") for key in files) >= 3  # Ray Train's, one per task end
    assert "checkpoints/replay/task-2/model.safetensors" in files and "report.md" in files


@pytest.mark.cluster
def test_a_stopped_job_marks_its_folder_interrupted_and_uploads_it_and_resumes_from_the_bucket(
        cluster, undisturbed, bucket):
    """`palimpsest stop` sends SIGTERM; the driver gets the time it needs (RAY_JOB_STOP_WAIT_TIME_S, not
    Ray's 3 s) to stop training, mark the folder interrupted and upload it beside its checkpoints.
    `submit --resume URI` then finishes it on the cluster, to the undisturbed run's accuracy matrix."""
    _, clean_folder, _, home = undisturbed
    env = _env(cluster, home, token=True)
    cluster.hold_at(task=1, step=10)
    sent = _cli(["submit", "jobs/quickstart.yaml", "--address", cluster.dashboard_url, "--storage",
                 bucket.uri("stopped", "runs"), *TINY, "--no-wait"], env)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    job_id = sent.stdout.split()[1]
    name = _run_folder(sent.stdout).split("?")[0].rsplit("/", 1)[1]
    cluster.wait_held()  # in task 2, after its task-1 checkpoint
    # Ray's job supervisor reads the grace period from the job's environment (its default is 3 s,
    # which a tiny model's folder fits in, so the variable is checked where Ray reads it).
    token = cluster.token_file.read_text().strip()
    info = requests.get(f"{cluster.dashboard_url}/api/jobs/{job_id}", headers={"Authorization": f"Bearer {token}"},
                        timeout=10).json()
    assert info["runtime_env"]["env_vars"]["RAY_JOB_STOP_WAIT_TIME_S"] == "120", info["runtime_env"]
    stopped = _cli(["stop", job_id, "--address", cluster.dashboard_url], env)
    assert stopped.returncode == 0 and "stop requested" in stopped.stdout, stopped.stdout + stopped.stderr
    ended = _cli(["logs", job_id, "--follow", "--address", cluster.dashboard_url], env)
    assert ended.returncode == 143, ended.stdout[-3000:]
    cluster.release()  # the resumed run passes step 10 of task 2
    # the way back, as the user submitted it: from the bucket, to the same cluster
    assert f"resume with: palimpsest submit --resume {_run_folder(sent.stdout)} --address {cluster.dashboard_url}" \
        in ended.stdout, ended.stdout[-3000:]
    assert f"palimpsest logs {job_id} --follow --address {cluster.dashboard_url}" in sent.stdout
    summary = json.loads(bucket.read(f"stopped/runs/{name}/summary.json"))
    assert summary["status"] == "interrupted" and "SIGTERM" in summary["error"], summary
    files = bucket.files(f"stopped/runs/{name}")
    assert any(key.endswith("checkpoint_manifest.json") for key in files)  # task 1's, in the bucket

    resumed = _cli(["submit", "--resume", _run_folder(sent.stdout), "--address", cluster.dashboard_url], env)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "replay · task 1/3" not in resumed.stdout and "replay · task 3/3 step 40/40" in resumed.stdout
    summary = json.loads(bucket.read(f"stopped/runs/{name}/summary.json"))
    clean = json.loads((clean_folder / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["resumed"]
    assert summary["methods"]["replay"]["accuracy_matrix"] == clean["methods"]["replay"]["accuracy_matrix"]
