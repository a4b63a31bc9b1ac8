"""The command line under bad conditions: a dead Ray address, Ctrl-C, a shared umask, loose specs, stale help.

The `palimpsest run` cases run the real command in a subprocess (it starts its own Ray
where one is needed); validate and --help go through typer's CliRunner.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from palimpsest.cli import app
from palimpsest.atomic import atomic_write_text
from palimpsest.run_folder import RunFolder
from palimpsest.kinds import KINDS

PALIMPSEST = Path(sys.executable).with_name("palimpsest")
COMMAND = [str(PALIMPSEST)] if PALIMPSEST.exists() else [sys.executable, "-m", "palimpsest.cli"]

# A continual job small enough for a 2-core laptop: two tasks of 8 people × 2 facts,
# 40 steps per task, a checkpoint every 10 steps.
TINY_CONTINUAL = """\
kind: continual
name: tiny
seed: 0
stream: {source: factworld, num_entities: 8, attributes_per_entity: 2, num_tasks: 2, general_samples: 4}
methods: [naive]
training: {steps: 40, batch_size: 8, checkpoint_every: 10, log_every: 10}
scaling: {num_workers: 1}
"""


def _job(tmp_path: Path, text: str = TINY_CONTINUAL, name: str = "job.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(extra)
    return env


def _palimpsest(args, *, env=None, timeout=120) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run(COMMAND + [str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                          env=env or _env())
    return done, time.monotonic() - started


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


# ----------------------------------------------------------------------------- 1. unreachable Ray


@pytest.mark.parametrize("address, origin, says", [
    ("127.0.0.1:1", "--address", "connection refused"),
    ("ray://127.0.0.1:1", "--address", "connection refused"),
    ("http://127.0.0.1:8265", "--address", "dashboard"),
    ("not-an-address", "--address", "expected HOST:PORT"),
    ("127.0.0.1:1", "$RAY_ADDRESS", "connection refused"),
])
def test_unreachable_ray_fails_in_seconds_with_one_line(tmp_path, address, origin, says):
    out = tmp_path / "run"
    if origin == "--address":
        done, took = _palimpsest(["run", _job(tmp_path), "--address", address, "--out", out], timeout=60)
    else:
        done, took = _palimpsest(["run", _job(tmp_path), "--out", out], env=_env(RAY_ADDRESS=address), timeout=60)
    lines = _error_lines(done.stderr)
    assert done.returncode == 2, done.stderr
    assert took < 30, f"took {took:.1f} s"
    assert len(lines) == 1 and lines[0].startswith("error:"), done.stderr
    assert address in lines[0] and f"from {origin}" in lines[0] and says in lines[0], lines[0]
    assert "Traceback" not in done.stderr + done.stdout
    assert not out.exists()


def test_a_port_that_never_answers_fails_within_the_probe_timeout(tmp_path):
    # The kernel accepts the connection (backlog), nothing ever speaks: ray.init would wait
    # for minutes on such an address (a hung head node, a firewall that swallows packets).
    # (All interfaces: Ray dials a local address as the node's own IP.)
    with socket.socket() as silent:
        silent.bind(("0.0.0.0", 0))
        silent.listen(8)
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        done, took = _palimpsest(["run", _job(tmp_path), "--address", address, "--out", tmp_path / "run"], timeout=60)
    assert done.returncode == 2, done.stderr
    assert took < 30, f"took {took:.1f} s"
    (line,) = _error_lines(done.stderr)
    assert address in line and "--address" in line and "no answer within" in line, line
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()


def _alone() -> list[str]:
    """A command prefix that hides this machine's processes (a new PID namespace), if allowed."""
    try:
        ok = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    return ["unshare", "--pid", "--fork", "--mount-proc"] if ok.returncode == 0 else []


def test_auto_without_a_running_cluster_is_bad_input(tmp_path):
    # `auto` joins the latest `ray start` or any Ray running on the machine (Ray finds them
    # with ps); in a PID namespace of its own the command sees none.
    from ray._private.services import find_bootstrap_address, find_gcs_addresses

    if find_bootstrap_address(None):
        pytest.skip("`ray start` ran on this machine: `--address auto` would join its cluster")
    prefix = _alone()
    if not prefix and find_gcs_addresses():
        pytest.skip("a Ray cluster runs on this machine: `--address auto` would join it")
    started = time.monotonic()
    done = subprocess.run(prefix + COMMAND + ["run", str(_job(tmp_path)), "--address", "auto", "--out",
                                              str(tmp_path / "run")], capture_output=True, text=True, timeout=60,
                          env=_env())
    took = time.monotonic() - started
    assert done.returncode == 2, done.stderr
    assert took < 30, f"took {took:.1f} s"
    (line,) = _error_lines(done.stderr)
    assert "auto" in line and "--address" in line, line
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- 2. Ctrl-C


def _wait_for(predicate, timeout: float, process: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if process.poll() is not None:
            pytest.fail(f"the run ended (status {process.returncode}) before {what}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no {what} within {timeout} s")
        time.sleep(0.2)


def _interrupt_after_first_checkpoint(tmp_path: Path, folder: Path, extra: list[str]) -> tuple[int, str, str]:
    """Start a run in its own session, send Ctrl-C (SIGINT to the process group, as a terminal
    does) once Ray's storage in the run folder holds a checkpoint; return (status, stdout, stderr)."""
    stdout, stderr = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with stdout.open("w") as out, stderr.open("w") as err:
        process = subprocess.Popen(COMMAND + ["run", str(_job(tmp_path)), "--out", str(folder), *extra],
                                   stdout=out, stderr=err, env=_env(), start_new_session=True)
        try:
            _wait_for(lambda: any(p.is_dir() for p in (folder / "ray").rglob("checkpoint_*")), 300, process,
                      "checkpoint")
            os.killpg(process.pid, signal.SIGINT)
            status = process.wait(timeout=120)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    return status, stdout.read_text(), stderr.read_text()


def _assert_interrupted(folder: Path, status: int, stderr: str, hint: str) -> None:
    assert status == 130, stderr
    assert f"interrupted; resume with: palimpsest run --resume {folder.resolve()}{hint}" in stderr, stderr
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "interrupted", summary
    report = (folder / "report.md").read_text()
    assert "interrupted" in report and "--resume" in report


@pytest.mark.cluster  # the CLI subprocess starts a local Ray of its own
def test_ctrl_c_during_a_ray_run_leaves_a_resumable_folder(tmp_path):
    folder = tmp_path / "run"
    status, stdout, stderr = _interrupt_after_first_checkpoint(tmp_path, folder, [])
    _assert_interrupted(folder, status, stderr, "")
    assert "Traceback" not in stderr
    # Ray's own chatter stays out of the user's terminal (ray_connection.init_ray).
    for noise in ("Token authentication", "PreemptionWatcher", "core_worker.cc", "PlacementGroupCleaner",
                  "Found multiple active Ray instances"):
        assert noise not in stdout + stderr, noise

    resumed = CliRunner().invoke(app, ["run", "--resume", str(folder), "--no-ray"])  # (in this process)
    assert resumed.exit_code == 0, resumed.output
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["resumed"] is True
    assert len(summary["accuracy_matrix"]) == 2
    # It went on from the checkpoint: task 1's first progress line (step 10) is not logged again.
    assert re.search(r"task 2/2 step 40/40\b", resumed.output), resumed.output  # (the lines are in the output)
    assert not re.search(r"task 1/2 step 10/40\b", resumed.output)


@pytest.mark.integration
def test_ctrl_c_without_ray_exits_130_and_resumes(tmp_path):
    folder = tmp_path / "run"
    status, _, stderr = _interrupt_after_first_checkpoint(tmp_path, folder, ["--no-ray", "--set", "training.steps=2000"])
    _assert_interrupted(folder, status, stderr, " --no-ray")
    assert "Traceback" not in stderr


# ----------------------------------------------------------------------------- 3. permissions


def _modes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode) for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_run_folder_files_follow_the_umask(tmp_path, umask, mode):
    from palimpsest.report import write_report

    previous = os.umask(umask)
    try:
        folder = RunFolder.create("perm", tmp_path / "run")
        folder.write_spec("kind: train\n")
        folder.write_env()
        folder.write_metrics([{"step": s, "split": "train", "metric": m, "value": 1.0 / s}
                              for s in (1, 2, 3) for m in ("train_loss", "loss")])
        folder.write_summary({"status": "ok", "kind": "train", "name": "perm", "seed": 0})
        write_report(folder)
        atomic_write_text(folder.path / "notes" / "free.txt", "x")
    finally:
        os.umask(previous)
    modes = _modes(folder.path)
    assert {"spec.yaml", "env.json", "metrics.jsonl", "summary.json", "report.md", "plots/loss.png",
            "plots/train_loss.png", "notes/free.txt"} <= set(modes)
    assert all(m == mode for m in modes.values()), {k: oct(v) for k, v in modes.items()}
    assert not [p for p in folder.path.rglob("*") if p.name.endswith(".tmp") or ".tmp." in p.name]


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "summary.json"
    atomic_write_text(target, "old")

    class Boom(Exception):
        pass

    from palimpsest.atomic import atomic_open

    with pytest.raises(Boom):
        with atomic_open(target) as handle:
            handle.write("half")
            raise Boom
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


# ----------------------------------------------------------------------------- 4. spec validation

runner = CliRunner()


def _validate(tmp_path: Path, text: str):
    return runner.invoke(app, ["validate", str(_job(tmp_path, text))])


def _with_value(field: str, yaml_value: str) -> str:
    """The tiny continual job with `field` set to the literal YAML text `yaml_value`."""
    import yaml

    document = yaml.safe_load(TINY_CONTINUAL)
    *parents, key = field.split(".")
    node = document
    for part in parents:
        node = node.setdefault(part, {})
    node[key] = "__VALUE__"
    return yaml.safe_dump(document, sort_keys=False).replace("__VALUE__", yaml_value)


@pytest.mark.parametrize("field, yaml_value", [
    ("training.steps", "yes"), ("training.lr", "true"), ("training.checkpoint_every", "on"),
    ("scaling.cpus_per_worker", "yes"), ("seed", "true"), ("stream.num_tasks", "yes"),
])
def test_booleans_are_not_numbers(tmp_path, field, yaml_value):
    result = _validate(tmp_path, _with_value(field, yaml_value))
    assert result.exit_code == 2, result.output
    assert re.search(rf"^error: .*: {re.escape(field)}: .*\(got (True|False)\)", result.output, re.M), result.output


def test_numbers_stay_numbers(tmp_path):
    # an int for a float field, YAML 1.2 exponents without a dot, the README's --set example
    document = TINY_CONTINUAL.replace("training: {", "training: {lr: 1e-3, max_grad_norm: 1, ")
    document = document.replace("scaling: {", "scaling: {cpus_per_worker: 1, ")
    result = _validate(tmp_path, document)
    assert result.exit_code == 0, result.output
    from palimpsest.spec import load_spec

    spec = load_spec(_job(tmp_path), ["training.lr=1e-3", "training.steps=10", "scaling.cpus_per_worker=2"])
    assert spec.training.lr == 1e-3 and spec.training.steps == 10 and spec.scaling.cpus_per_worker == 2.0


def test_set_refuses_a_boolean_for_a_number(tmp_path):
    result = runner.invoke(app, ["run", str(_job(tmp_path)), "--set", "training.steps=yes", "--no-ray",
                                 "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert "training.steps" in result.output
    assert not (tmp_path / "run").exists()


def _hf_train(data_files: str) -> str:
    return f"kind: train\ndata: {{source: hf, name: json, data_files: {data_files}}}\n"


@pytest.mark.parametrize("data_files, missing", [
    ("missing.jsonl", "missing.jsonl"), ("./data/missing.json", "./data/missing.json"),
    ("/nonexistent/facts.parquet", "/nonexistent/facts.parquet"), ("~/no-such-dir/facts.csv", "~/no-such-dir/facts.csv"),
    ("[present.jsonl, missing.txt]", "missing.txt"),
])
def test_hf_data_files_that_name_missing_local_files_are_refused(tmp_path, monkeypatch, data_files, missing):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "present.jsonl").write_text('{"question": "q", "answer": "a"}\n')
    result = _validate(tmp_path, _hf_train(data_files))
    assert result.exit_code == 2, result.output
    assert f"data.data_files: data file not found: {missing}" in result.output, result.output


def test_hf_data_files_in_a_stream_name_the_task(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = ("kind: continual\nmethods: [naive]\nstream:\n  source: datasets\n  eval_on_train: true\n  tasks:\n"
            "    - {source: hf, name: json, data_files: gone.jsonl}\n")
    result = _validate(tmp_path, text)
    assert result.exit_code == 2, result.output
    assert "stream.tasks[0].data_files: data file not found: gone.jsonl" in result.output, result.output


@pytest.mark.parametrize("data_files", ["data/*.jsonl", "present.jsonl", "hf://datasets/org/name/train.jsonl"])
def test_hf_data_files_that_exist_globs_and_urls_pass(tmp_path, monkeypatch, data_files):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "present.jsonl").write_text('{"question": "q", "answer": "a"}\n')
    result = _validate(tmp_path, _hf_train(data_files))
    assert result.exit_code == 0, result.output


# ----------------------------------------------------------------------------- 5. help


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["validate", "--help"], ["report", "--help"]])
def test_help_describes_only_what_exists(args):
    result = runner.invoke(app, args, terminal_width=200)
    assert result.exit_code == 0, result.output
    text = result.output
    # commands and features that do not exist (help must not advertise these)
    for missing in (r"DP-SGD",):
        assert not re.search(missing, text), (missing, text)
    if args == ["--help"]:
        assert all(command in text for command in ("submit", "jobs", "logs", "stop", "tune")), text
    if args != ["report", "--help"]:
        assert all(kind in text for kind in KINDS), text
    if args in (["--help"], ["run", "--help"]):
        assert "130" in text and "--resume" in text


# ----------------------------------------------------------------------------- 6. Ray's chatter


@pytest.mark.integration
def test_forwarded_ray_noise_is_dropped_and_our_lines_pass(ray_session, capfd):
    """What Ray forwards from its workers to this terminal goes through ray_connection's filter."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    noise = ("[2026-11-29 18:26:21,759 E 8688 8744] core_worker.cc:2465: Actor with class name: 'PreemptionWatcher' "
             "and ID: 'f79bf5e3d47036b384f02d0801000000' has constructor arguments in the object store and "
             "max_restarts > 0. If the arguments in the object store go out of scope or are lost, the actor "
             "restart will fail. See https://github.com/ray-project/ray/issues/53727 for more details.")
    ours = "[palimpsest] naive · task 1/2 step 10/40 train_loss 3.8238 grad_norm 3.069 (0.2s)"
    failure = "ValueError: a real error from a worker"
    dispatcher.emit({"ip": "127.0.0.1", "localhost": "127.0.0.1", "pid": 4242, "job": "", "is_err": True,
                     "actor_name": "TrainController", "task_name": "", "lines": [noise, ours, failure]})
    printed = "".join(capfd.readouterr())
    assert "PreemptionWatcher" not in printed
    assert ours in printed and failure in printed


# ----------------------------------------------------------------------------- 6. submit's bad input


@pytest.mark.parametrize("extra, message", [
    (["--address", "127.0.0.1:6379", "--storage", "/shared"], "not a job server URL"),
    (["--storage", "/shared"], "--address: give the cluster's job server"),
    (["--address", "http://127.0.0.1:9", "--storage", "/shared"], "cannot reach the job server"),
    (["--address", "http://127.0.0.1:9"], "--storage: give shared storage"),
    (["--address", "http://127.0.0.1:9", "--storage", "relative/runs"], "is relative"),
    (["--address", "http://127.0.0.1:9", "--storage", "ftp://bucket/runs"], "--storage: ftp://bucket/runs: unknown "
                                                                               "scheme 'ftp'"),
    (["--address", "http://127.0.0.1:9", "--storage", "s3://"], "no bucket"),
    # a bucket is good storage: the next thing checked is the job server
    (["--address", "http://127.0.0.1:9", "--storage", "s3://bucket/runs"], "cannot reach the job server"),
    (["--address", "http://127.0.0.1:9", "--storage", "/shared", "--set", "training.lrr=1"], "training.lrr"),
])
def test_submit_refuses_bad_input_with_one_line_and_exit_2(monkeypatch, extra, message):
    for variable in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        monkeypatch.delenv(variable, raising=False)
    result = runner.invoke(app, ["submit", "jobs/quickstart.yaml", *extra], terminal_width=200)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("job, message", [
    # a sweep's storage_path is its job's: checked with the bucket in place, then the job server
    ("jobs/private/sweep_epsilon.yaml", "cannot reach the job server"),
    ("jobs/unlearn/factworld_forget01.yaml", "an unlearn job's training workers read the tokenizer"),
])
def test_submit_to_a_bucket_sets_the_kinds_storage_field_or_says_why_it_cannot(monkeypatch, job, message):
    for variable in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        monkeypatch.delenv(variable, raising=False)
    result = runner.invoke(app, ["submit", job, "--address", "http://127.0.0.1:9", "--storage", "s3://bucket/runs"],
                           terminal_width=300)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output, result.output


@pytest.mark.parametrize("args, message", [
    (["--resume", "runs/x"], "is relative"),
    (["--resume", "s3:/bucket/runs/x"], "two slashes"),
    (["jobs/quickstart.yaml", "--resume", "/shared/runs/x"], "--resume takes the run folder only"),
    ([], "give a job spec"),
    (["--resume", "s3://bucket/runs/x"], "cannot reach the job server"),  # well formed: the server is next
])
def test_submit_resume_takes_a_run_folder_on_the_cluster(monkeypatch, args, message):
    for variable in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        monkeypatch.delenv(variable, raising=False)
    result = runner.invoke(app, ["submit", *args, "--address", "http://127.0.0.1:9"], terminal_width=300)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output, result.output


def test_submit_refuses_a_job_outside_the_uploaded_project(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(Path("jobs/quickstart.yaml").read_text())
    result = runner.invoke(app, ["submit", str(job), "--address", "http://127.0.0.1:9", "--storage", "/shared"])
    assert result.exit_code == 2 and "outside the project folder" in result.output, result.output
