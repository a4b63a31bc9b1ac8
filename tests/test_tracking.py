"""Experiment tracking (palimpsest/tracking.py): the real mlflow against a file store in tmp_path,
TensorBoard event files read back with tensorboard's reader, W&B offline, and Ray Tune's callbacks."""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
from palimpsest.spec.loading import _describe
from palimpsest.spec.tracking import TrackingSpec
from palimpsest.tracking import STATE_FILE, Tracker, flatten_params, metric_key, tune_callbacks, worker_tracking
from pydantic import ValidationError

mlflow = pytest.importorskip("mlflow", reason="mlflow is a dependency: pip install -e '.[dev]'")

SPEC = {"kind": "continual", "name": "cl-demo", "seed": 3,
        "training": {"steps": 20, "lr": 0.003},
        "methods": [{"name": "naive", "params": {}}, {"name": "ewc", "params": {"lambda": 100.0}}],
        "note": "x" * 700}

# Rows as the producers write them: the train loop's train_loss, the evaluator's per-split
# rows, continual's method added by the runner; two methods each start again from step 0.
ROWS = [
    {"step": 5, "task": 0, "split": "train", "metric": "train_loss", "value": 2.5, "method": "naive"},
    {"step": 10, "task": 0, "split": "train", "metric": "train_loss", "value": 2.0, "method": "naive"},
    {"step": 10, "task": 0, "split": "task0", "metric": "exact_match", "value": 0.25, "method": "naive"},
    {"step": 10, "task": 0, "split": "holdout", "metric": "exact_match", "value": 0.0, "method": "naive"},
    {"step": 5, "task": 0, "split": "train", "metric": "train_loss", "value": 2.6, "method": "ewc"},
    {"step": 10, "task": 0, "split": "task0", "metric": "exact_match", "value": 0.5, "method": "ewc"},
]
MORE = [
    {"step": 20, "task": 1, "split": "task0", "metric": "exact_match", "value": 0.75, "method": "ewc"},
    {"step": 20, "task": 1, "split": "train", "metric": "epsilon", "value": 1.5, "method": "ewc"},
]


def tracking(tmp_path, **sections) -> TrackingSpec:
    return TrackingSpec.model_validate(sections)


def mlflow_section(tmp_path):
    return {"tracking_uri": str(tmp_path / "mlruns"), "experiment": "exp"}


def client_for(tmp_path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=(tmp_path / "mlruns").resolve().as_uri())


def history(client, run_id):
    """{key: [(step, value), ...]} of every metric of a run."""
    keys = client.get_run(run_id).data.metrics
    return {key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key)) for key in keys}


def finish_folder(folder: Path, rows, summary) -> None:
    (folder / "plots").mkdir(parents=True, exist_ok=True)
    (folder / "plots" / "curves.png").write_bytes(b"\x89PNG\r\n\x1a\n fake")
    (folder / "spec.yaml").write_text("kind: continual\nname: cl-demo\n")
    (folder / "report.md").write_text("# report\n")
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


# ----------------------------------------------------------------------------- the spec section


def test_section_defaults_shorthand_and_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert TrackingSpec().enabled is False and TrackingSpec().mlflow is None
    spec = TrackingSpec.model_validate({"mlflow": True, "wandb": True, "tensorboard": True})
    assert spec.mlflow.tracking_uri == (tmp_path / "mlruns").as_uri()  # absolute, like every resolved path
    assert spec.mlflow.experiment is None and spec.wandb.mode == "offline"
    assert TrackingSpec.model_validate({"mlflow": {"tracking_uri": "file:store"}}).mlflow.tracking_uri == \
        (tmp_path / "store").as_uri()
    assert TrackingSpec.model_validate({"mlflow": {"tracking_uri": "http://h:5000"}}).mlflow.tracking_uri == \
        "http://h:5000"
    assert TrackingSpec.model_validate({"mlflow": False}).mlflow is None
    # the resolved spec (spec.yaml) validates again to the same section
    again = TrackingSpec.model_validate(spec.model_dump(mode="json"))
    assert again == spec


@pytest.mark.parametrize("section, expected", [
    ({"mlflow": {"tracking_url": "x"}},
     "mlflow.tracking_url: unknown key; did you mean 'tracking_uri'? allowed: experiment, tracking_uri"),
    ({"tensorbord": True}, "tensorbord: unknown key; did you mean 'tensorboard'? allowed: mlflow, tensorboard, wandb"),
    ({"wandb": {"mode": "ofline"}}, "wandb.mode: Input should be 'offline' or 'online' (got 'ofline')"),
    ({"mlflow": "yes"}, "mlflow: expected true, false or a mapping of tracking_uri, experiment (got 'yes')"),
])
def test_a_bad_field_is_one_clear_error(section, expected):
    with pytest.raises(ValidationError) as caught:
        TrackingSpec.model_validate(section)
    assert _describe(caught.value, TrackingSpec) == [expected]


def test_metric_keys_keep_method_task_and_split_apart():
    keys = {metric_key(r) for r in ROWS}
    assert len(keys) == 5  # the two train_loss rows of naive are one curve at two steps
    assert metric_key(ROWS[2]) == "method_naive/task_0/task0/exact_match"
    assert metric_key({"step": 1, "task": 0, "split": "train", "metric": "train_loss", "value": 1}) == \
        "task_0/train/train_loss"
    rl = {"step": 400, "task": "recall-lstm-s0", "split": "eval", "metric": "success_rate", "value": 0.5,
          "agent": "lstm", "env": "recall", "seed": 0, "iteration": 2, "wall_s": 1.5}
    assert metric_key(rl) == "agent_lstm/env_recall/seed_0/task_recall-lstm-s0/eval/success_rate"
    assert metric_key({"metric": "odd name!", "request": "f/10", "split": "request", "value": 1}) == \
        "request_f_10/request/odd_name_"


def test_params_are_flat_and_short():
    params = flatten_params(SPEC)
    assert params["training.lr"] == "0.003" and params["seed"] == "3" and params["name"] == "cl-demo"
    assert params["methods.1.params.lambda"] == "100.0" and params["methods.0.params"] == "{}"
    assert len(params["note"]) == 500 and params["note"].endswith("...")


# ----------------------------------------------------------------------------- MLflow


def test_mlflow_run_params_metrics_artifacts_status(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    tracker = Tracker.open(tracking(tmp_path, mlflow=mlflow_section(tmp_path)), name="cl-demo", folder=folder,
                           spec=SPEC)
    assert tracker.active == ["mlflow"]
    assert tracker.log_records(ROWS) == len(ROWS)
    assert tracker.log_records(ROWS) == 0  # the same list again: nothing new
    assert tracker.log_records(ROWS + MORE) == len(MORE)  # the grown list: only its new rows
    finish_folder(folder, ROWS + MORE, {"status": "ok", "methods": {"ewc": {"final_accuracy": 0.75}},
                                        "results": [{"a": 1}], "flag": True})
    tracker.finish(folder, "ok")

    client = client_for(tmp_path)
    state = json.loads((folder / STATE_FILE).read_text())
    run = client.get_run(state["mlflow"]["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert client.get_experiment(run.info.experiment_id).name == "exp"
    assert run.data.params == flatten_params(SPEC)
    got = history(client, run.info.run_id)
    assert got.pop("summary/methods/ewc/final_accuracy") == [(0, 0.75)]
    expected: dict[str, list] = {}
    for row in ROWS + MORE:
        expected.setdefault(metric_key(row), []).append((row["step"], row["value"]))
    assert got == {key: sorted(points) for key, points in expected.items()}  # each row once, at its step
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"spec.yaml", "summary.json", "report.md", "metrics.jsonl", "plots"}
    assert [a.path for a in client.list_artifacts(run.info.run_id, "plots")] == ["plots/curves.png"]
    assert state["mlflow"]["rows"] == len(ROWS + MORE)


def test_finish_logs_rows_not_yet_logged_and_maps_statuses(tmp_path):
    client = None
    for status, expected in (("failed", "FAILED"), ("interrupted", "KILLED")):
        folder = tmp_path / status
        folder.mkdir()
        tracker = Tracker.open(tracking(tmp_path, mlflow=mlflow_section(tmp_path)), name="cl-demo", folder=folder,
                               spec=SPEC)
        tracker.log_records(ROWS[:2])
        finish_folder(folder, ROWS, {"status": status})
        tracker.finish(folder, status)
        client = client or client_for(tmp_path)
        run = client.get_run(json.loads((folder / STATE_FILE).read_text())["mlflow"]["run_id"])
        assert run.info.status == expected
        assert sum(len(points) for points in history(client, run.info.run_id).values()) == len(ROWS)
    with pytest.raises(ValueError, match="allowed: ok, failed, interrupted"):
        Tracker.open(None, name="x", folder=tmp_path, spec={}).finish(tmp_path, "done")


def test_a_resumed_run_folder_continues_its_mlflow_run(tmp_path):
    first, other = tmp_path / "first", tmp_path / "other"
    first.mkdir()
    other.mkdir()
    section = tracking(tmp_path, mlflow=mlflow_section(tmp_path))
    tracker = Tracker.open(section, name="cl-demo", folder=first, spec=SPEC)
    tracker.log_records(ROWS)
    tracker.finish(None, "interrupted")
    run_id = json.loads((first / STATE_FILE).read_text())["mlflow"]["run_id"]
    Tracker.open(section, name="cl-demo", folder=other, spec=SPEC).finish(other, "ok")  # another run in between

    resumed = Tracker.open(section, name="cl-demo", folder=first, spec={**SPEC, "resumed": True})
    client = client_for(tmp_path)
    assert json.loads((first / STATE_FILE).read_text())["mlflow"]["run_id"] == run_id
    assert client.get_run(run_id).info.status == "RUNNING"
    resumed.log_records(ROWS + MORE)  # the run folder's metrics.jsonl: the old rows and the new
    resumed.finish(SimpleNamespace(path=first), "ok")  # a RunFolder: its .path
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["resumed"] == "true"
    got = history(client, run_id)
    assert sum(len(points) for points in got.values()) == len(ROWS + MORE)  # old rows not logged again
    assert got["method_ewc/task_1/task0/exact_match"] == [(20, 0.75)]
    runs = client.search_runs([run.info.experiment_id])
    assert len(runs) == 2  # first (resumed) and other: no third run


def test_an_unreachable_server_is_one_warning_and_the_run_goes_on(tmp_path, caplog):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    section = tracking(tmp_path, mlflow={"tracking_uri": f"http://127.0.0.1:{port}"}, tensorboard=True)
    with caplog.at_level(logging.WARNING, logger="palimpsest"):
        tracker = Tracker.open(section, name="cl-demo", folder=tmp_path, spec=SPEC)
        tracker.log_records(ROWS)
        tracker.finish(tmp_path, "ok")
    warnings = [r.getMessage() for r in caplog.records if r.name == "palimpsest"]
    assert len(warnings) == 1 and warnings[0].startswith("tracking: mlflow left out, the run goes on without it:")
    assert tracker.finished and list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_no_section_tracks_nothing_and_writes_nothing(tmp_path):
    tracker = Tracker.open(None, name="x", folder=tmp_path, spec=SPEC)
    assert tracker.log_records(ROWS) == 0
    tracker.finish(tmp_path, "ok")
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- TensorBoard


def scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found: dict[str, list] = {}
    for events in sorted(logdir.glob("events.out.tfevents.*")):  # a resumed run adds a file
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            found.setdefault(tag, []).extend((e.step, pytest.approx(e.value)) for e in accumulator.Scalars(tag))
    return {tag: sorted(points, key=lambda p: p[0]) for tag, points in found.items()}


def test_tensorboard_event_files_read_back(tmp_path):
    section = tracking(tmp_path, tensorboard=True)
    with Tracker.open(section, name="cl-demo", folder=tmp_path, spec=SPEC) as tracker:
        tracker.log_records(ROWS)
        tracker.log_records(ROWS)
    with Tracker.open(section, name="cl-demo", folder=tmp_path, spec=SPEC) as tracker:  # resumed
        tracker.log_records(ROWS + MORE)
    got = scalars(tmp_path / "tensorboard")
    expected: dict[str, list] = {}
    for row in ROWS + MORE:
        expected.setdefault(metric_key(row), []).append((row["step"], row["value"]))
    assert got == {key: sorted(points, key=lambda p: p[0]) for key, points in expected.items()}
    assert json.loads((tmp_path / STATE_FILE).read_text())["status"] == "ok"


# ----------------------------------------------------------------------------- W&B offline


def wandb_records(path: Path) -> list[bytes]:
    """The records of a .wandb file: a 7-byte header (':W&B', magic, version), then LevelDB's log
    format — 32 KiB blocks of chunks, each crc32 (4), length (2, little-endian), type (1:
    full, 2: first, 3: middle, 4: last). wandb 0.31 reads them only in its Go core."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pending, pos, block = [], b"", 7, 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 1:
            records.append(chunk)
        elif kind in (2, 3):
            pending += chunk
        elif kind == 4:
            records.append(pending + chunk)
            pending = b""
    return records


def read_wandb_run(run_file: Path) -> dict:
    from wandb.proto import wandb_internal_pb2

    logged, config, summary, exit_code = [], {}, {}, None
    for data in wandb_records(run_file):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            logged += [(key, row["step"], value) for key, value in row.items() if not key.startswith("_")
                       and key != "step"]
        elif kind in ("run", "config"):  # the config: in the run record, then updates
            updates = record.run.config.update if kind == "run" else record.config.update
            config.update({item.key: json.loads(item.value_json) for item in updates})
        elif kind == "summary":
            summary.update({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.summary.update})
        elif kind == "exit":
            exit_code = record.exit.exit_code
    return {"logged": logged, "config": config, "summary": summary, "exit_code": exit_code}


def test_wandb_offline_run_and_its_resume(tmp_path, capfd):
    pytest.importorskip("wandb", reason="wandb is optional (pip install -e '.[wandb]')")

    section = tracking(tmp_path, wandb={"project": "palimpsest-test"})
    rows = ROWS + [dict(ROWS[-1], value=0.6)]  # one key twice at one step: two points, not one
    tracker = Tracker.open(section, name="cl-demo", folder=tmp_path, spec=SPEC)
    assert tracker.active == ["wandb"], "W&B offline needs no login"
    tracker.log_records(rows[:3])
    tracker.finish(None, "interrupted")
    run_id = json.loads((tmp_path / STATE_FILE).read_text())["wandb"]["id"]

    finish_folder(tmp_path, rows, {"status": "ok", "score": 0.5})
    resumed = Tracker.open(section, name="cl-demo", folder=tmp_path, spec=SPEC)  # the run folder resumed
    resumed.log_records(rows)
    resumed.finish(None, "ok")
    assert json.loads((tmp_path / STATE_FILE).read_text())["wandb"]["id"] == run_id

    first, last = sorted((tmp_path / "wandb").glob(f"offline-run-*-{run_id}"))  # offline: a folder each, one id
    before, after = read_wandb_run(first / f"run-{run_id}.wandb"), read_wandb_run(last / f"run-{run_id}.wandb")
    assert (before["exit_code"], after["exit_code"]) == (130, 0)
    assert sorted(before["logged"] + after["logged"]) == sorted((metric_key(r), r["step"], r["value"]) for r in rows)
    assert before["config"]["training"] == SPEC["training"]
    assert after["summary"]["summary/score"] == 0.5
    assert {"spec.yaml", "summary.json", "report.md", "metrics.jsonl", "plots/curves.png"} <= {
        str(p.relative_to(last / "files")) for p in (last / "files").rglob("*") if p.is_file()}
    assert "wandb" not in capfd.readouterr().err  # W&B's console lines stay out of ours


# ----------------------------------------------------------------------------- Ray Tune


@pytest.mark.integration
def test_tune_callbacks_log_each_trial(tmp_path, ray_session):
    from ray import tune

    inside = tracking(tmp_path, mlflow={"tracking_uri": str(tmp_path / "mlruns"), "experiment": "inside"})

    def trainable(config):
        worker = worker_tracking(inside, name="search-demo", config=config)  # Ray's setup_mlflow
        for step in range(3):
            worker.log({"loss": config["lr"] * (3 - step), "label": "not a number"}, step=step)
            tune.report({"loss": config["lr"] * (3 - step)})
        worker.finish()

    try:
        import wandb  # noqa: F401
        with_wandb = {"wandb": {"project": "palimpsest-test"}}
    except ImportError:
        with_wandb = {}
    section = tracking(tmp_path, mlflow=mlflow_section(tmp_path), tensorboard=True, **with_wandb)
    callbacks = tune_callbacks(section, name="search-demo", folder=tmp_path / "search")
    assert len(callbacks) == 2 + len(with_wandb)
    tuner = tune.Tuner(trainable, param_space={"lr": tune.grid_search([0.5, 2.0])},
                       run_config=tune.RunConfig(name="search-demo", storage_path=str(tmp_path / "ray"), verbose=0,
                                                 callbacks=callbacks))
    results = tuner.fit()
    assert not results.errors

    client = client_for(tmp_path)
    runs = client.search_runs([client.get_experiment_by_name("exp").experiment_id])
    assert sorted(float(r.data.params["lr"]) for r in runs) == [0.5, 2.0]
    for run in runs:
        assert run.info.status == "FINISHED"
        lr = float(run.data.params["lr"])
        points = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss"))
        assert points == [(1, pytest.approx(3 * lr)), (2, pytest.approx(2 * lr)), (3, pytest.approx(lr))]
    runs = client.search_runs([client.get_experiment_by_name("inside").experiment_id])  # from the trials
    assert sorted(float(r.data.params["lr"]) for r in runs) == [0.5, 2.0]
    for run in runs:
        lr = float(run.data.params["lr"])
        points = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss"))
        assert points == [(0, pytest.approx(3 * lr)), (1, pytest.approx(2 * lr)), (2, pytest.approx(lr))]
        assert run.info.status == "FINISHED" and set(run.data.metrics) == {"loss"}
    trials = sorted((tmp_path / "search" / "tensorboard").iterdir())
    assert len(trials) == 2
    for trial in trials:
        assert [step for step, _ in scalars(trial)["ray/tune/loss"]] == [1, 2, 3]
    if with_wandb:  # Ray's WandbLoggerCallback, offline: one W&B run per trial, its id the trial's
        ids = {path.name.rsplit("-", 1)[1] for path in (tmp_path / "search" / "wandb").glob("offline-run-*")}
        assert ids == {result.metrics["trial_id"] for result in results}


def test_tune_callbacks_for_no_section():
    assert tune_callbacks(None, name="x", folder="unused") == []
    assert tune_callbacks(TrackingSpec(), name="x", folder="unused") == []
