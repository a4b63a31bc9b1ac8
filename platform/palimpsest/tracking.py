"""Experiment tracking: a run's spec, metrics and files also go to MLflow, TensorBoard or W&B.

Two entry points, chosen by where the code runs:

* `Tracker` — the driver of `palimpsest run` (any kind). `Tracker.open(...)` starts (or, for a
  resumed run folder, continues) one tracked run per backend and logs the resolved spec as
  parameters; `log_records(rows)` logs `metrics.jsonl` rows as metrics with their steps and may
  be called again with the whole, grown list (only the new rows are logged); `finish(folder,
  status)` logs the summary's scalars and the run's files as artifacts and ends the tracked runs.
* `tune_callbacks(...)` — Ray Tune's `RunConfig(callbacks=...)` for `palimpsest tune`: Ray's
  own `MLflowLoggerCallback`, `WandbLoggerCallback` and `TBXLoggerCallback`, one tracked run per
  trial with the trial's config as parameters and every reported result as metrics.

Which Ray integration each backend goes through:

* W&B, driver: `ray.air.integrations.wandb.setup_wandb` (it works outside a Ray session too:
  the run id, name and project are passed as its keyword arguments; `resume="allow"` with the
  id kept in the run folder continues the same W&B run). Tune: `WandbLoggerCallback`.
* MLflow, driver: `mlflow.tracking.MlflowClient` with an explicit run id — the same client calls
  Ray's `MLflowLoggerCallback` makes on the driver. Ray's `setup_mlflow` is not used there: it
  is written for a Tune/Train worker (the experiment and run are named after the Tune trial),
  starts mlflow's process-global *active* run (a second run in the same process would be
  handed the first one), and cannot continue a given run id. Tune: `MLflowLoggerCallback`.
* TensorBoard: tensorboardX's `SummaryWriter`, the writer of Ray's `TBXLoggerCallback`; in Tune,
  a `TBXLoggerCallback` whose event files go to `<folder>/tensorboard/<trial>/`.

Inside a Ray Train or Tune worker (code that reports from the training loop itself),
`worker_tracking(...)` calls Ray's `setup_mlflow` / `setup_wandb`, which log from rank 0 only.

A backend that fails (a server that can't be reached, no W&B login) costs one warning on the
`palimpsest` logger and is dropped; the run goes on. Nothing here prints. mlflow, wandb and
tensorboardX are imported only when a backend is opened.

The metric key of a row (`metric_key`): its identifying fields in a fixed order as `name_value`
segments (method, agent, env, seed, request, task), then its split, then the metric —
`method_ewc/task_1/eval/exact_match`, `task_0/train/train_loss`,
`agent_lstm/env_recall/seed_0/task_recall-lstm-s0/eval/success_rate`. Characters other than
letters, digits, `_`, `-` and `.` become `_`, so the key is the same in all three backends.
Other fields (rl's `iteration`, `wall_s`) are attributes of the point, not of the curve, and
are left out. The step is the row's `step` (a row without one is logged at step 0).

What a run folder keeps for tracking: `tracking.json` (each backend's run id and how many rows
it has logged — what a resumed run continues from), `tensorboard/` (event files) and `wandb/`
(W&B's files, offline runs to `wandb sync`). MLflow's file store is wherever `tracking_uri`
says (default `mlruns/` in the working directory).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import secrets
import shutil
import socket
import string
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

logger = logging.getLogger("palimpsest")

STATE_FILE = "tracking.json"
TENSORBOARD_DIR = "tensorboard"
DIMENSIONS = ("method", "agent", "env", "seed", "request", "task")  # a row's identifying fields, in key order
ARTIFACT_FILES = ("spec.yaml", "summary.json", "report.md", "metrics.jsonl")
PLOTS_DIR = "plots"
PARAM_VALUE_LIMIT = 500  # MLflow before 2.x (and Databricks) refuse longer values; spec.yaml has them whole
KEY_LIMIT = 250  # MLflow's limit on a metric or parameter name
PROBE_TIMEOUT_S = 5.0
MLFLOW_STATUS = {"ok": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
WANDB_EXIT_CODE = {"ok": 0, "failed": 1, "interrupted": 130}
STATUSES = tuple(MLFLOW_STATUS)


# ----------------------------------------------------------------------------- keys, rows, parameters


def _segment(value: Any) -> str:
    """One part of a metric or parameter name in the characters MLflow, TensorBoard and W&B all keep
    as they are (letters, digits, '_', '-', '.'); others become '_'."""
    text = re.sub(r"[^\w.\-]", "_", str(value).strip())
    return "_" if text in ("", ".", "..") else text


def metric_key(row: Mapping[str, Any]) -> str:
    """The metric name of a metrics.jsonl row: `dim_value/.../split/metric` (module docstring)."""
    parts = [f"{dim}_{_segment(row[dim])}" for dim in DIMENSIONS if row.get(dim) is not None]
    if row.get("split") is not None:
        parts.append(_segment(row["split"]))
    parts.append(_segment(row["metric"]))
    return "/".join(parts)[:KEY_LIMIT]


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    if hasattr(value, "item"):  # numpy scalars
        return _number(value.item())
    return None


def metric_points(records: Iterable[Mapping[str, Any]]) -> list[tuple[str, int, float]]:
    """(key, step, value) of each row that has a metric name and a numeric value, in order."""
    points = []
    for row in records:
        if not isinstance(row, Mapping) or row.get("metric") is None:
            continue
        value = _number(row.get("value"))
        if value is None:
            continue
        step = _number(row.get("step"))
        points.append((metric_key(row), int(step) if step is not None and math.isfinite(step) else 0, value))
    return points


def flatten_params(spec: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """The resolved spec as `a.b.c -> text` parameters: lists by index, values as JSON (strings as
    they are), each cut to PARAM_VALUE_LIMIT characters (ending '...')."""
    params: dict[str, str] = {}

    def walk(node: Any, path: str) -> None:
        if isinstance(node, Mapping) and node:
            for key, value in node.items():
                walk(value, f"{path}.{_segment(key)}" if path else _segment(key))
        elif isinstance(node, (list, tuple)) and node:
            for index, value in enumerate(node):
                walk(value, f"{path}.{index}" if path else str(index))
        else:
            text = node if isinstance(node, str) else json.dumps(node, default=str)
            if len(text) > PARAM_VALUE_LIMIT:
                text = text[: PARAM_VALUE_LIMIT - 3] + "..."
            params[path[:KEY_LIMIT]] = text

    walk(spec, prefix)
    return params


def summary_scalars(summary: Mapping[str, Any], prefix: str = "summary") -> dict[str, float]:
    """The numeric leaves of summary.json's nested mappings (lists are left out) as `summary/a/b`."""
    scalars: dict[str, float] = {}

    def walk(node: Any, path: str) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                walk(value, f"{path}/{_segment(key)}")
        elif not isinstance(node, bool):
            value = _number(node)
            if value is not None and math.isfinite(value):
                scalars[path[:KEY_LIMIT]] = value

    walk(summary, prefix)
    return scalars


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            if line.strip():
                rows.append(json.loads(line))
    return rows


def _write_state(folder: Path, state: dict) -> None:
    path = folder / STATE_FILE
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- backend helpers


def allow_file_store(tracking_uri: str) -> None:
    """MLflow 3 refuses its file store unless MLFLOW_ALLOW_FILE_STORE is set (it is in maintenance,
    not removed): for a `file:` tracking URI, set it for this process unless the user already has."""
    if tracking_uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")


def probe(tracking_uri: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Raise ConnectionError at once for an http(s) tracking server that can't be reached (mlflow
    itself retries for minutes before it gives up)."""
    parsed = urlparse(tracking_uri)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=timeout).close()
    except OSError as error:
        raise ConnectionError(f"{tracking_uri} can't be reached: {error}") from None


@contextlib.contextmanager
def _wandb_mode(mode: str) -> Iterator[None]:
    """Ray's W&B integration looks for an API key unless WANDB_MODE says offline: set it while Ray checks."""
    before = os.environ.get("WANDB_MODE")
    if mode == "offline":
        os.environ["WANDB_MODE"] = "offline"
    try:
        yield
    finally:
        if mode == "offline":
            if before is None:
                os.environ.pop("WANDB_MODE", None)
            else:
                os.environ["WANDB_MODE"] = before


def _wandb_settings():
    import wandb

    # W&B's own console lines and stdout capture stay out of palimpsest's output.
    return wandb.Settings(silent=True, console="off")


# ----------------------------------------------------------------------------- driver-side backends


class _MlflowRun:
    name = "mlflow"

    def __init__(self, section, *, job: str, folder: Path, saved: dict | None):
        uri = section.tracking_uri
        allow_file_store(uri)
        probe(uri)
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        self.rows = 0
        self.resumed = False
        if saved and saved.get("tracking_uri") == uri and saved.get("run_id") and self._exists(saved["run_id"]):
            self.run_id, self.experiment_id = saved["run_id"], saved.get("experiment_id")
            self.rows, self.resumed = int(saved.get("rows", 0)), True
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            experiment = section.experiment or job
            found = self.client.get_experiment_by_name(experiment)
            if found is not None and found.lifecycle_stage == "deleted":
                self.client.restore_experiment(found.experiment_id)
            self.experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
            run = self.client.create_run(self.experiment_id, run_name=folder.name,
                                         tags={"palimpsest.job": job, "palimpsest.run_folder": str(folder)})
            self.run_id = run.info.run_id
        self.uri = uri

    def _exists(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(run_id).info.lifecycle_stage != "deleted"
        except MlflowException:
            return False

    def state(self) -> dict:
        return {"tracking_uri": self.uri, "experiment_id": self.experiment_id, "run_id": self.run_id,
                "rows": self.rows}

    def log_params(self, params: dict[str, str], spec: Mapping) -> None:
        from mlflow.entities import Param

        if self.resumed:  # parameters can't change once logged: a resumed run adds only new ones
            have = self.client.get_run(self.run_id).data.params
            params = {k: v for k, v in params.items() if k not in have}
        items = [Param(k, v) for k, v in params.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start:start + 100])

    def log_points(self, points: list[tuple[str, int, float]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, step, value in points]
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[start:start + 1000])

    def finish(self, status: str, folder: Path, scalars: dict[str, float]) -> None:
        if scalars:
            self.log_points([(key, 0, value) for key, value in scalars.items()])
        for name in ARTIFACT_FILES:
            if (folder / name).is_file():
                self.client.log_artifact(self.run_id, str(folder / name))
        if (folder / PLOTS_DIR).is_dir() and any((folder / PLOTS_DIR).iterdir()):
            self.client.log_artifacts(self.run_id, str(folder / PLOTS_DIR), PLOTS_DIR)
        self.client.set_terminated(self.run_id, MLFLOW_STATUS[status])


def _event_file_suffix() -> str:
    # tensorboardX names an event file by the second and the host: a writer opened again within
    # the same second (a quick resume) would truncate the first one's file.
    return f".{os.getpid()}.{time.time_ns()}"


class _TensorBoardRun:
    name = "tensorboard"

    def __init__(self, folder: Path, saved: dict | None):
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(logdir=str(folder / TENSORBOARD_DIR), flush_secs=30,
                                    filename_suffix=_event_file_suffix())
        self.rows = int((saved or {}).get("rows", 0))

    def state(self) -> dict:
        return {"logdir": self.writer.logdir, "rows": self.rows}

    def log_params(self, params: dict[str, str], spec: Mapping) -> None:
        lines = "\n".join(f"    {key}: {value}" for key, value in params.items())  # markdown code block
        self.writer.add_text("spec", lines or "    (empty)")
        self.writer.flush()

    def log_points(self, points: list[tuple[str, int, float]]) -> None:
        for key, step, value in points:
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()

    def finish(self, status: str, folder: Path, scalars: dict[str, float]) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, global_step=0)
        self.writer.add_text("status", status)
        self.writer.close()


class _WandbRun:
    name = "wandb"

    def __init__(self, section, *, job: str, folder: Path, spec: Mapping, saved: dict | None):
        from ray.air.integrations.wandb import setup_wandb

        saved = saved or {}
        self.resumed = bool(saved.get("id"))
        run_id = saved.get("id") or "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
        self.rows = int(saved.get("rows", 0))
        project = section.project or job
        extra = {"entity": section.entity} if section.entity else {}
        with _wandb_mode(section.mode):
            self.run = setup_wandb(config=dict(spec), trial_id=run_id, trial_name=folder.name, project=project,
                                   mode=section.mode, dir=str(folder), resume="allow", reinit="create_new",
                                   settings=_wandb_settings(), **extra)
        # Rows come method by method, each from step 0: W&B's own step must only grow, so every
        # metric is plotted against `step`, a logged field, instead.
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")
        self.id, self.project, self.mode = run_id, project, section.mode

    def state(self) -> dict:
        return {"id": self.id, "project": self.project, "mode": self.mode, "dir": str(self.run.dir),
                "rows": self.rows}

    def log_params(self, params: dict[str, str], spec: Mapping) -> None:
        pass  # setup_wandb logged the spec as the run's config

    def log_points(self, points: list[tuple[str, int, float]]) -> None:
        batch: dict[str, float] = {}
        step = None
        for key, at, value in points:  # consecutive points of one step go in one history row
            if batch and (at != step or key in batch):
                self.run.log({"step": step, **batch})
                batch = {}
            step = at
            batch[key] = value
        if batch:
            self.run.log({"step": step, **batch})

    def finish(self, status: str, folder: Path, scalars: dict[str, float]) -> None:
        self.run.summary.update(scalars)
        # The run's files folder is uploaded with the run (`wandb sync` for an offline one);
        # copies, not run.save's symlinks (which warn on the console and follow later edits).
        files = Path(self.run.dir)
        for path in [folder / name for name in ARTIFACT_FILES] + sorted((folder / PLOTS_DIR).glob("*.png")):
            if path.is_file():
                target = files / path.relative_to(folder)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
        self.run.finish(exit_code=WANDB_EXIT_CODE[status])


# ----------------------------------------------------------------------------- the driver's tracker


class Tracker:
    """The tracked runs of one run folder (driver side). `Tracker.open(None, ...)` tracks nothing.

    Usage (the run lifecycle)::

        tracker = Tracker.open(spec.tracking, name=spec.name, folder=folder.path,
                               spec=spec.model_dump(mode="json"))
        ...                                      # as metrics.jsonl grows (optional):
        tracker.log_records(folder.read_metrics())
        tracker.finish(folder, "ok")             # or "failed" / "interrupted", after summary.json
                                                 # and report.md are written

    or `with Tracker.open(...) as tracker:` — the block's end finishes the runs as ok, an
    exception as failed, Ctrl-C (KeyboardInterrupt) as interrupted.
    """

    def __init__(self, folder: Path, backends: list, state: dict):
        self.folder = Path(folder)
        self.backends = backends
        self.state = state
        self.finished = False

    @property
    def active(self) -> list[str]:
        """The backends still logging."""
        return [backend.name for backend in self.backends]

    @classmethod
    def open(cls, tracking, *, name: str, folder: str | Path, spec: Mapping[str, Any] | Any) -> Tracker:
        """Start the tracked runs of `folder`, or continue them when `folder/tracking.json` names them.

        Args:
            tracking: the job's `TrackingSpec`, or None (nothing tracked, nothing written).
            name: the job's name: the default MLflow experiment and W&B project.
            folder: the run folder.
            spec: the resolved spec (a mapping, or a pydantic model dumped as JSON), logged as parameters.
        """
        folder = Path(folder)
        if tracking is None or not tracking.enabled:
            return cls(folder, [], {})
        if hasattr(spec, "model_dump"):
            spec = spec.model_dump(mode="json")
        state = _read_json(folder / STATE_FILE)
        state = state if isinstance(state, dict) else {}
        tracker = cls(folder, [], state)
        openers = []
        if tracking.mlflow is not None:
            openers.append(("mlflow", lambda: _MlflowRun(tracking.mlflow, job=name, folder=folder,
                                                         saved=state.get("mlflow"))))
        if tracking.tensorboard:
            openers.append(("tensorboard", lambda: _TensorBoardRun(folder, state.get("tensorboard"))))
        if tracking.wandb is not None:
            openers.append(("wandb", lambda: _WandbRun(tracking.wandb, job=name, folder=folder, spec=spec,
                                                       saved=state.get("wandb"))))
        for backend, opener in openers:
            try:
                tracker.backends.append(opener())
            except Exception as error:  # noqa: BLE001 - a tracking backend never stops the run
                _warn(backend, error)
        params = flatten_params(spec)
        tracker._each("log_params", params, spec)
        tracker._save()
        return tracker

    def log_records(self, records: Iterable[Mapping[str, Any]]) -> int:
        """Log the rows of metrics.jsonl not logged yet: pass the whole list each time (the run
        folder rewrites it whole); rows past what each backend has logged are new. Returns how
        many rows were new (for the backend furthest behind)."""
        if not self.backends:
            return 0
        records = list(records)
        new = 0
        for backend in list(self.backends):
            fresh = records[backend.rows:]
            if not fresh:
                continue
            if self._call(backend, "log_points", metric_points(fresh)):
                backend.rows = len(records)
                new = max(new, len(fresh))
        self._save()
        return new

    def finish(self, folder=None, status: str = "ok") -> None:
        """Log metrics.jsonl's remaining rows, the summary's scalars and the run's files (spec.yaml,
        summary.json, report.md, metrics.jsonl, plots/*.png), and end the tracked runs with `status`:
        ok, failed or interrupted (MLflow FINISHED / FAILED / KILLED; W&B exit code 0 / 1 / 130).

        `folder`: the run folder (a RunFolder or a path; None: the one the tracker was opened on)
        whose files are logged. A second call does nothing.
        """
        if status not in STATUSES:
            raise ValueError(f"unknown run status '{status}'; allowed: {', '.join(STATUSES)}")
        if folder is not None:
            self.folder = Path(getattr(folder, "path", folder))
        if self.finished:
            return
        self.finished = True
        if not self.backends:
            return
        self.log_records(_read_rows(self.folder / "metrics.jsonl"))
        summary = _read_json(self.folder / "summary.json")
        scalars = summary_scalars(summary) if isinstance(summary, Mapping) else {}
        self._each("finish", status, self.folder, scalars)
        self.state["status"] = status
        self._save()
        self.backends = []

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self.finish(None, "ok")
        else:
            self.finish(None, "interrupted" if issubclass(kind, KeyboardInterrupt) else "failed")

    # ---------------------------------------------------------------------
    def _call(self, backend, method: str, *args) -> bool:
        try:
            getattr(backend, method)(*args)
            return True
        except Exception as error:  # noqa: BLE001 - a tracking backend never stops the run
            _warn(backend.name, error)
            self.backends.remove(backend)
            with contextlib.suppress(Exception):
                if backend.name == "tensorboard":
                    backend.writer.close()
            return False

    def _each(self, method: str, *args) -> None:
        for backend in list(self.backends):
            self._call(backend, method, *args)

    def _save(self) -> None:
        for backend in self.backends:
            self.state[backend.name] = backend.state()
        try:
            _write_state(self.folder, self.state)
        except OSError as error:
            logger.warning("tracking: %s not written (%s): a resumed run starts new tracked runs",
                           self.folder / STATE_FILE, error)


def _warn(backend: str, error: BaseException) -> None:
    text = " ".join(str(error).split()) or type(error).__name__
    if len(text) > 300:
        text = text[:297] + "..."
    logger.warning("tracking: %s left out, the run goes on without it: %s", backend, text)


# ----------------------------------------------------------------------------- Ray Tune


def tune_callbacks(tracking, *, name: str, folder: str | Path) -> list:
    """Ray Tune callbacks (`tune.RunConfig(callbacks=...)`) for the job's `tracking:` section.

    * mlflow: Ray's `MLflowLoggerCallback` — one MLflow run per trial, in the experiment `experiment`
      (default: `name`), with the trial's config as parameters and each reported result as metrics
      at its `training_iteration`; the run ends FINISHED or FAILED with the trial.
    * tensorboard: Ray's `TBXLoggerCallback`, writing each trial's event files to
      `<folder>/tensorboard/<trial>/` (and the trial's hyperparameters when it ends). Without it Ray
      Tune still adds its own `TBXLoggerCallback` silently, writing into each trial's folder in Tune's
      storage (`<storage_path>/<name>/<trial>/events.out.tfevents.*`) unless the environment sets
      `TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1` (which also drops Tune's CSV and JSON loggers);
      `tensorboard: true` is the documented way, and replaces Ray's default one.
    * wandb: Ray's `WandbLoggerCallback` — one W&B run per trial (id: the trial id), grouped by
      `name`, files under `<folder>/wandb/`.

    Each is guarded: a failing backend costs one warning and is dropped; the search goes on.
    """
    if tracking is None or not tracking.enabled:
        return []
    folder = Path(folder)
    callbacks = []
    if tracking.mlflow is not None:
        with _opening("mlflow", callbacks):
            callbacks.append(_mlflow_callback(tracking.mlflow, name))
    if tracking.tensorboard:
        with _opening("tensorboard", callbacks):
            callbacks.append(_tensorboard_callback(folder / TENSORBOARD_DIR))
    if tracking.wandb is not None:
        with _opening("wandb", callbacks):
            callbacks.append(_wandb_callback(tracking.wandb, name, folder))
    return callbacks


@contextlib.contextmanager
def _opening(backend: str, callbacks: list) -> Iterator[None]:
    try:
        yield
    except Exception as error:  # noqa: BLE001 - e.g. wandb not installed
        _warn(backend, error)


_HOOKS = ("setup", "log_trial_start", "log_trial_result", "log_trial_save", "log_trial_end", "on_experiment_end")


def _guarded(base: type, backend: str) -> type:
    """`base` (a Tune callback class) whose hooks turn a failure into one warning, then do nothing."""

    def wrap(hook: str):
        inner = getattr(base, hook)

        def guarded(self, *args, **kwargs):
            if getattr(self, "_palimpsest_broken", False):
                return None
            try:
                return inner(self, *args, **kwargs)
            except Exception as error:  # noqa: BLE001 - a tracking backend never stops the search
                self._palimpsest_broken = True
                _warn(backend, error)
                return None

        guarded.__name__ = hook
        return guarded

    return type(f"Guarded{base.__name__}", (base,), {hook: wrap(hook) for hook in _HOOKS if hasattr(base, hook)})


def _mlflow_callback(section, name: str):
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    class Callback(_guarded(MLflowLoggerCallback, "mlflow")):
        def setup(self, *args, **kwargs):
            if getattr(self, "_palimpsest_broken", False):
                return
            try:
                allow_file_store(self.tracking_uri)
                probe(self.tracking_uri)
            except Exception as error:  # noqa: BLE001
                self._palimpsest_broken = True
                _warn("mlflow", error)
                return
            super().setup(*args, **kwargs)

    allow_file_store(section.tracking_uri)
    return Callback(tracking_uri=section.tracking_uri, experiment_name=section.experiment or name,
                    tags={"palimpsest.job": name})


def _tensorboard_callback(logdir: Path):
    from ray.tune.logger import TBXLoggerCallback

    class Callback(_guarded(TBXLoggerCallback, "tensorboard")):
        """Ray's TBXLoggerCallback, each trial's writer in `logdir/<trial>` instead of the trial's folder."""

        def log_trial_start(self, trial):
            if getattr(self, "_palimpsest_broken", False):
                return
            try:
                if trial in self._trial_writer:
                    self._trial_writer[trial].close()
                self._trial_writer[trial] = self._summary_writer_cls(str(logdir / str(trial)), flush_secs=30,
                                                                     filename_suffix=_event_file_suffix())
                self._trial_result[trial] = {}
            except Exception as error:  # noqa: BLE001
                self._palimpsest_broken = True
                _warn("tensorboard", error)

    return Callback()


def _wandb_callback(section, name: str, folder: Path):
    from ray.air.integrations.wandb import WandbLoggerCallback

    mode = section.mode

    class Callback(_guarded(WandbLoggerCallback, "wandb")):
        def setup(self, *args, **kwargs):
            with _wandb_mode(mode):
                return super().setup(*args, **kwargs)

    extra = {"entity": section.entity} if section.entity else {}
    folder.mkdir(parents=True, exist_ok=True)
    return Callback(project=section.project or name, group=name, mode=mode, dir=str(folder), **extra)


# ----------------------------------------------------------------------------- inside a Ray worker


class WorkerTracking:
    """What `worker_tracking` returns: `log(metrics, step)` to each backend set up on this worker."""

    def __init__(self, mlflow=None, wandb_run=None):
        self.mlflow = mlflow
        self.wandb = wandb_run

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        numbers = {key: v for key, value in metrics.items() if (v := _number(value)) is not None}
        if self.mlflow is not None:
            try:
                self.mlflow.log_metrics(numbers, step=step)
            except Exception as error:  # noqa: BLE001
                _warn("mlflow", error)
                self.mlflow = None
        if self.wandb is not None:
            try:
                self.wandb.log({**numbers, "step": step})
            except Exception as error:  # noqa: BLE001
                _warn("wandb", error)
                self.wandb = None

    def finish(self) -> None:
        if self.mlflow is not None:
            with contextlib.suppress(Exception):
                self.mlflow.end_run()
        if self.wandb is not None:
            with contextlib.suppress(Exception):
                self.wandb.finish()


def worker_tracking(tracking, *, name: str, config: Mapping[str, Any], folder: str | Path | None = None
                    ) -> WorkerTracking:
    """Inside a Ray Train worker or a Tune trainable: Ray's `setup_mlflow` and `setup_wandb`.

    Both log from rank 0 only in Ray Train (the other workers get no-op modules), name the run
    after the Tune trial when there is one, and log `config` as the run's parameters (MLflow) or
    config (W&B). `folder` holds W&B's files (default: W&B's own `./wandb`). TensorBoard is a
    driver-side backend (Tracker, tune_callbacks) and is not set up here.
    """
    if tracking is None or not tracking.enabled:
        return WorkerTracking()
    mlflow_module = wandb_run = None
    if tracking.mlflow is not None:
        try:
            from ray.air.integrations.mlflow import setup_mlflow

            allow_file_store(tracking.mlflow.tracking_uri)
            probe(tracking.mlflow.tracking_uri)
            for attempt in (1, 2):  # trials starting together race to create the experiment: one loses once
                try:
                    mlflow_module = setup_mlflow(dict(config), tracking_uri=tracking.mlflow.tracking_uri,
                                                 experiment_name=tracking.mlflow.experiment or name,
                                                 create_experiment_if_not_exists=True)
                    break
                except Exception:
                    if attempt == 2:
                        raise
        except Exception as error:  # noqa: BLE001
            _warn("mlflow", error)
    if tracking.wandb is not None:
        try:
            from ray.air.integrations.wandb import setup_wandb

            section = tracking.wandb
            extra = {"entity": section.entity} if section.entity else {}
            if folder is not None:
                extra["dir"] = str(folder)
            with _wandb_mode(section.mode):
                wandb_run = setup_wandb(dict(config), project=section.project or name, mode=section.mode,
                                        reinit="create_new", settings=_wandb_settings(), **extra)
            wandb_run.define_metric("step")
            wandb_run.define_metric("*", step_metric="step")
        except Exception as error:  # noqa: BLE001
            _warn("wandb", error)
    return WorkerTracking(mlflow_module, wandb_run)
