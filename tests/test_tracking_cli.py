"""`tracking:` through `palimpsest run`: the run's MLflow run and TensorBoard events, as a user opens them.

`--no-ray` runs of a 12-step train job: seconds. (The backends themselves: tests/test_tracking.py.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from palimpsest.cli import app
from palimpsest.tracking import metric_key


def write_job(tmp_path: Path, store: Path, **training) -> Path:
    job = {"kind": "train", "name": "tracked", "seed": 1,
           "data": {"source": "factworld", "num_entities": 6, "attributes_per_entity": 2, "split": "retain90"},
           "training": {"steps": 12, "batch_size": 8, "log_every": 4, "checkpoint_every": 6, **training},
           "eval": {"eval_every": 6},
           "tracking": {"mlflow": {"tracking_uri": str(store), "experiment": "cli-test"}, "tensorboard": True}}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def mlflow_runs(store: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"file:{store}")
    experiment = client.get_experiment_by_name("cli-test")
    return client, client.search_runs([experiment.experiment_id])


@pytest.mark.heavy  # whole runs (no Ray)
def test_a_tracked_run_logs_its_spec_metrics_and_report_to_mlflow_and_tensorboard(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    store, out = tmp_path / "mlruns", tmp_path / "run"
    result = CliRunner().invoke(app, ["run", str(write_job(tmp_path, store)), "--no-ray", "--out", str(out)])
    assert result.exit_code == 0, result.output

    client, runs = mlflow_runs(store)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["training.steps"] == "12" and run.data.params["kind"] == "train"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r for r in rows if r["metric"] == "train_loss"]
    history = client.get_metric_history(run.info.run_id, metric_key(losses[0]))
    assert sorted((m.step, m.value) for m in history) == sorted((r["step"], r["value"]) for r in losses)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.md", "summary.json", "spec.yaml"} <= artifacts, artifacts

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars(metric_key(losses[0]))] == [r["step"] for r in losses]


@pytest.mark.heavy
def test_a_failed_run_is_failed_in_mlflow_and_its_resume_finishes_the_same_run(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    from palimpsest.runners import train as train_runner
    from palimpsest.train.config import FailAt

    prepare = train_runner.prepare

    def failing_once(spec, **kwargs):  # the loop's test hook: raise once at step 6 (after its checkpoint)
        prepared = prepare(spec, **kwargs)
        prepared.worker_config = prepared.worker_config.with_(
            fail_at=FailAt(task=0, step=6, marker=str(tmp_path / "failed-once")))
        return prepared

    monkeypatch.setattr(train_runner, "prepare", failing_once)
    store, out = tmp_path / "mlruns", tmp_path / "run"
    failed = CliRunner().invoke(app, ["run", str(write_job(tmp_path, store)), "--no-ray", "--out", str(out)])
    assert failed.exit_code == 1, failed.output
    client, runs = mlflow_runs(store)
    assert [r.info.status for r in runs] == ["FAILED"]

    resumed = CliRunner().invoke(app, ["run", "--resume", str(out), "--no-ray"])
    assert resumed.exit_code == 0, resumed.output
    client, again = mlflow_runs(store)
    assert [r.info.run_id for r in again] == [runs[0].info.run_id] and again[0].info.status == "FINISHED"
    key = metric_key({"task": 0, "split": "train", "metric": "train_loss"})
    steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, key)]
    assert sorted(steps) == sorted(set(steps)) and max(steps) == 12  # every step once, through the end

