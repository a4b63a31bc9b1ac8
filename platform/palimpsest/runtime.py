"""Where a job runs and what it leaves: Ray start/connect, the run folder, versions.

The run folder contract (DESIGN.md): spec.yaml, env.json, metrics.jsonl,
summary.json, checkpoints/, plots/, report.md. Every file is written atomically
(temp file in the same folder, then rename) so a crash never leaves half a file.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import logging
import os
import platform
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]


def utc_stamp() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` through a temp file and rename (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n")


def _jsonable(value):
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


class RunFolder:
    """One run's folder. Created only once the spec and data are known to be good."""

    def __init__(self, path: Path):
        self.path = Path(path)

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

    def write_summary(self, summary: dict) -> None:
        atomic_write_json(self.path / "summary.json", summary)

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


# ----------------------------------------------------------------------------- ray


def init_ray(address: str | None = None):
    """Start an embedded local Ray, or connect to `address` / $RAY_ADDRESS.

    Reuses a session that is already up (the test suite shares one).
    """
    import ray

    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS") or None
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    # Ray Train v2 reroutes print() through its logger, which shows each line twice on
    # the driver; plain prints reach the driver once through log_to_driver.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    kwargs: dict[str, Any] = dict(logging_level=logging.WARNING, log_to_driver=True)
    if address:
        # A remote cluster's workers may not have our package installed: ship it.
        import palimpsest
        import palimpsest_envs

        kwargs["runtime_env"] = {
            "env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"},
            "py_modules": [str(Path(palimpsest.__file__).parent), str(Path(palimpsest_envs.__file__).parent)]
        }
        ray.init(address=address, **kwargs)
    else:
        # The dashboard also serves the state API that Ray Train's placement-group
        # cleaner polls; without it the cleaner warns every second.
        ray.init(address="local", include_dashboard=True, **kwargs)
    return ray


def ray_cluster_cpus() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 0))
