"""The run folder: what a job leaves, written so a crash never leaves half a file.

The run folder contract (docs/design.md): spec.yaml, env.json, metrics.jsonl,
summary.json, checkpoints/, plots/, report.md. Every file is written atomically
(temp file in the same folder, then rename). `RunFolder` also carries a run's
lifecycle (start, finish, fail, interrupt) for `run`, Tune trials and sweep points.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from palimpsest.atomic import _jsonable, atomic_write_json, atomic_write_text

# Set by the CLI when Ctrl-C or SIGTERM reaches a run (an interrupt can surface as another
# error, e.g. Ray Train's aborted run): a runner then knows the error is not the run's own.
INTERRUPTED = threading.Event()

REPO_ROOT = Path(__file__).resolve().parents[2]


def utc_stamp() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


class RunFolder:
    """One run's folder. Created only once the spec and data are known to be good.

    Its lifecycle, the same for `palimpsest run`, each trial of a search and each point of a
    sweep: `start` (a new run writes its resolved spec and env.json; the summary says running),
    then `finish` (the run's summary and report), or `fail` / `interrupt` (why, and what the
    run was, so `--resume` knows it). A run is `finished` when its summary says ok.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._identity: dict = {}
        self.tracker = None  # set by the CLI when the job asks for experiment tracking (palimpsest.tracking)

    @classmethod
    def create(cls, name: str, out: str | Path | None = None, root: str | Path = "runs") -> "RunFolder":
        path = Path(out) if out else Path(root) / f"{name}-{utc_stamp()}"
        if path.exists() and any(path.iterdir()):
            raise FileExistsError(f"run folder already exists and is not empty: {path}")
        path.mkdir(parents=True, exist_ok=True)
        return cls(path.resolve())

    # Layout ---------------------------------------------------------------
    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def plots(self) -> Path:
        return self.path / "plots"

    @property
    def tokenizer(self) -> Path:
        return self.path / "tokenizer"

    # Writers --------------------------------------------------------------
    def write_spec(self, spec_yaml: str) -> None:
        atomic_write_text(self.path / "spec.yaml", spec_yaml)

    def write_env(self, extra: dict | None = None) -> None:
        atomic_write_json(self.path / "env.json", {**collect_env(), **(extra or {})})

    def write_metrics(self, records: list[dict]) -> None:
        atomic_write_text(self.path / "metrics.jsonl", "".join(json.dumps(r, default=_jsonable) + "\n" for r in records))
        if self.tracker is not None:  # the rows not logged yet, with their steps
            self.tracker.log_records(records)

    def write_summary(self, summary: dict) -> None:
        atomic_write_json(self.path / "summary.json", summary)

    # Lifecycle --------------------------------------------------------------
    def start(self, *, kind: str, name: str, seed, spec_yaml: str | None = None, resumed: bool = False,
              **extra) -> None:
        """(Re)start the run. `spec_yaml`: a new run's resolved spec (written with env.json); `extra` goes
        into every summary until the run ends (a trial's config, what it plans to spend)."""
        self._identity = {"kind": kind, "name": name, "seed": seed, **extra}
        if spec_yaml is not None:
            self.write_spec(spec_yaml)
            self.write_env()
        self.write_summary({"status": "running", **self._identity, "resumed": resumed})

    def finish(self, summary: dict) -> None:
        """The run is done: its summary, report and plots (and its tracked artifacts)."""
        from palimpsest.report import write_report

        self.write_summary(summary)
        write_report(self)
        if self.tracker is not None:
            self.tracker.finish(self, "ok")

    def fail(self, error: str, **extra) -> None:
        """The run failed: the summary says why (`--resume` finishes it from its last checkpoint)."""
        self._end("failed", error, extra)

    def interrupt(self, error: str, *, stop=None, **extra) -> None:
        """Ctrl-C or SIGTERM stopped the run: the summary says so and how to resume. `stop`: called once the
        summary says so, before the report (ending the run's Ray actors: no checkpoint after "interrupted")."""
        self._end("interrupted", error, extra, stop)

    def _end(self, status: str, error: str, extra: dict, stop=None) -> None:
        self.write_summary({"status": status, **self._identity, "error": error, **extra})
        if stop is not None:
            stop()
        try:
            from palimpsest.report import write_report

            write_report(self)
        except Exception:  # noqa: BLE001 - the report is a courtesy here; the summary already says what happened
            pass
        if self.tracker is not None:
            self.tracker.finish(self, status)

    @property
    def finished(self) -> bool:
        """Whether the run in this folder ran to its end (its summary says ok)."""
        return (self.path / "summary.json").is_file() and self.read_summary().get("status") == "ok"

    # Readers (report, tests) ----------------------------------------------
    def read_summary(self) -> dict:
        return json.loads((self.path / "summary.json").read_text())

    def read_metrics(self) -> list[dict]:
        path = self.path / "metrics.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ----------------------------------------------------------------------------- environment

_PACKAGES = ("palimpsest", "torch", "ray", "transformers", "peft", "deepspeed", "opacus", "tokenizers",
             "datasets", "gymnasium", "numpy", "pydantic")


def collect_env() -> dict:
    """Versions, git commit and hardware: what a reader needs to reproduce a run."""
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    hardware: dict[str, Any] = {"cpu_count": os.cpu_count(), "machine": platform.machine()}
    try:
        import torch

        hardware["cuda_available"] = torch.cuda.is_available()
        hardware["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "argv": sys.argv,
        "git_commit": _git_commit(),
        "versions": versions,
        "hardware": hardware,
        "created_utc": utc_stamp(),
    }


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain"], capture_output=True, text=True)
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


