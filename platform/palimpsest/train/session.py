"""Where the training loop reports to: Ray Train, or a plain process without Ray.

The loop only talks to a `TrainSession`; that is what lets the same code run under
`TorchTrainer` with N workers and on a single machine with no Ray at all.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

REPORTED_METRICS = "reported_metrics.json"  # beside a local checkpoint: what was reported with it


class TrainSession:
    """What the loop needs from its runtime."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    def latest_checkpoint(self) -> str | None:
        """Directory of the checkpoint to resume from, if any."""
        raise NotImplementedError

    def report(self, metrics: dict, checkpoint_dir: str | None = None) -> None:
        """Record metrics; on rank 0 also persist `checkpoint_dir` (every rank must call)."""
        raise NotImplementedError


class LocalSession(TrainSession):
    """World size 1, no Ray: checkpoints are copied under `checkpoint_root`."""

    def __init__(self, checkpoint_root: str | Path, resume_from: str | None = None, device: str | None = None):
        self.root = Path(checkpoint_root)
        self.resume_from = resume_from
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.reports: list[dict] = []
        # (directory, metrics), like Ray's Result; an interrupted attempt's are picked up again
        self.checkpoints: list[tuple[str, dict]] = [
            (str(meta.parent), json.loads(meta.read_text()))
            for meta in sorted(self.root.glob(f"checkpoint_*/{REPORTED_METRICS}"))
        ]
        self.last_checkpoint: str | None = None

    def latest_checkpoint(self) -> str | None:
        return self.last_checkpoint or self.resume_from

    def report(self, metrics: dict, checkpoint_dir: str | None = None) -> None:
        self.reports.append(dict(metrics))
        if checkpoint_dir is not None:
            # continue the numbering of an earlier, interrupted attempt in the same folder
            index = len(list(self.root.glob("checkpoint_*"))) + 1 if self.root.exists() else 1
            target = self.root / f"checkpoint_{index:06d}"
            # Copy under a temporary name, then rename: a crash never leaves a partial
            # checkpoint that a resume would pick up.
            partial = target.with_name(f".{target.name}.partial")
            shutil.rmtree(partial, ignore_errors=True)
            shutil.copytree(checkpoint_dir, partial)
            (partial / REPORTED_METRICS).write_text(json.dumps(metrics))
            partial.rename(target)
            self.last_checkpoint = str(target)
            self.checkpoints.append((str(target), dict(metrics)))


class RaySession(TrainSession):
    """Inside a Ray Train worker (the process group is already set up by TorchTrainer)."""

    def __init__(self, resume_from: str | None = None):
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.device = ray.train.torch.get_device()
        self._resume_from = resume_from

    def latest_checkpoint(self) -> str | None:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is not None:
            # Ray hands back a directory it keeps for this attempt (local storage here).
            return checkpoint.to_directory()
        return self._resume_from

    def report(self, metrics: dict, checkpoint_dir: str | None = None) -> None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)
