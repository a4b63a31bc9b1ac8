"""Where the training loop reports to: Ray Train, or a plain process without Ray.

The loop only talks to a `TrainSession`; that is what lets the same code run under
`TorchTrainer` with N workers and on a single machine with no Ray at all.

Every checkpoint directory a session persists carries a manifest (`MANIFEST`: name,
size and sha256 of each file), written before the directory is handed over, and a
session only resumes from a directory whose files match it: a restart never reads a
partial checkpoint. Under Ray every rank reads the checkpoint where it lies (or from a
private download): ranks never share a download directory (see `checkpoint_directory`).
"""

from __future__ import annotations

import atexit
import json
import logging
import re
import shutil
import tempfile
from pathlib import Path

import torch

from palimpsest.manifest import MANIFEST, CheckpointCorruptError, verify_checkpoint, write_manifest
from palimpsest.storage import is_uri, name_of

logger = logging.getLogger(__name__)

REPORTED_METRICS = "reported_metrics.json"  # beside a local checkpoint: what was reported with it


def _verified(directory: str) -> str:
    if not verify_checkpoint(directory):
        logger.warning("checkpoint %s has no %s (written by an older version): resuming without "
                       "checking that it is complete", directory, MANIFEST)
    return directory


# ---------------------------------------------------------------------------- sessions
class TrainSession:
    """What the loop needs from its runtime."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    def latest_checkpoint(self) -> str | None:
        """Directory of the checkpoint to resume from, if any (verified against its manifest)."""
        raise NotImplementedError

    def report(self, metrics: dict, checkpoint_dir: str | None = None) -> None:
        """Record metrics; on rank 0 also persist `checkpoint_dir` (every rank must call)."""
        raise NotImplementedError


_CHECKPOINT_NAME = re.compile(r"checkpoint_(\d+)")


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
        """The newest checkpoint, verified. If it is damaged and it is one of this folder's
        checkpoints, the newest complete earlier one is used instead (the loop replays the
        steps in between exactly); the damaged ones are renamed `.checkpoint_*.corrupt`."""
        target = self.last_checkpoint or self.resume_from
        if target is None:
            return None
        try:
            return _verified(target)
        except CheckpointCorruptError as error:
            fallback = self._fall_back(target, error)
            if fallback is None:
                raise
            return fallback

    def _fall_back(self, damaged: str, error: CheckpointCorruptError) -> str | None:
        own = [Path(d).resolve() for d, _ in self.checkpoints]
        if Path(damaged).resolve() not in own:
            return None  # not ours (an explicit resume_from): nothing to fall back to
        index = own.index(Path(damaged).resolve())
        bad = [index]
        for earlier in range(index - 1, -1, -1):
            try:
                good = _verified(self.checkpoints[earlier][0])
            except CheckpointCorruptError:
                bad.append(earlier)
                continue
            logger.warning("%s; resuming from the previous complete checkpoint %s", error, good)
            for i in bad:
                path = Path(self.checkpoints[i][0])
                aside, n = path.with_name(f".{path.name}.corrupt"), 1
                while aside.exists():  # an earlier fallback's, under the same number
                    aside, n = path.with_name(f".{path.name}.corrupt{n}"), n + 1
                path.rename(aside)
            self.checkpoints = [c for i, c in enumerate(self.checkpoints) if i not in bad]
            self.last_checkpoint = good
            return good
        return None

    def _next_index(self) -> int:
        """One past the highest existing number (a count would collide after a gap)."""
        numbers = [int(m.group(1)) for p in self.root.glob("checkpoint_*")
                   if (m := _CHECKPOINT_NAME.fullmatch(p.name))] if self.root.exists() else []
        return max(numbers, default=0) + 1

    def report(self, metrics: dict, checkpoint_dir: str | None = None) -> None:
        self.reports.append(dict(metrics))
        if checkpoint_dir is not None:
            # continue the numbering of an earlier, interrupted attempt in the same folder
            target = self.root / f"checkpoint_{self._next_index():06d}"
            # Copy under a temporary name, then rename: a crash never leaves a partial
            # checkpoint that a resume would pick up. The manifest (of the copy) lets a
            # resume also refuse a checkpoint damaged after the rename.
            partial = target.with_name(f".{target.name}.partial")
            shutil.rmtree(partial, ignore_errors=True)
            shutil.copytree(checkpoint_dir, partial)
            (partial / REPORTED_METRICS).write_text(json.dumps(metrics))
            write_manifest(partial)
            partial.rename(target)
            self.last_checkpoint = str(target)
            self.checkpoints.append((str(target), dict(metrics)))


def checkpoint_directory(checkpoint, rank: int) -> str:
    """A local directory holding `checkpoint` (a `ray.train.Checkpoint`) that no other rank writes.

    Why not `checkpoint.to_directory()`: with no path it downloads into
    /tmp/checkpoint_tmp_<uuid>, and the uuid travels with the pickled Checkpoint, so all
    ranks on a node share that directory. Its file lock only serialises the downloads: a
    rank that arrives after another finished downloads again, truncating and rewriting
    each file under the rank already reading it (torch.load: "PytorchStreamReader failed
    reading file data/N: file read failed").

    On a local (or shared, mounted) filesystem the persisted checkpoint is read in place:
    Ray never writes to it again. Otherwise it is downloaded into a directory of this
    process's own, removed at exit.
    """
    import pyarrow.fs

    if isinstance(checkpoint.filesystem, pyarrow.fs.LocalFileSystem):
        if not Path(checkpoint.path).is_dir():
            raise FileNotFoundError(f"checkpoint {checkpoint.path} is not on this node's filesystem: with "
                                    "several nodes, storage_path must be shared storage or a bucket URI")
        return checkpoint.path
    target = tempfile.mkdtemp(prefix=f"palimpsest-restore-rank{rank}-")
    atexit.register(shutil.rmtree, target, ignore_errors=True)
    return checkpoint.to_directory(target)


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
        """Ray's latest checkpoint (after a restart) or `resume_from`, verified.

        A damaged Ray checkpoint raises `CheckpointCorruptError` instead of falling back:
        Ray registers a checkpoint only after its copy completed, so a mismatch means the
        storage changed it, and every rank would have to agree on the same older one.
        """
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        # `resume_from` names the newest complete checkpoint on storage when the run started;
        # Ray's may be older (one reported just before an interrupt is not registered yet).
        # Checkpoint folder names sort in time order.
        newer_on_storage = checkpoint is not None and self._resume_from is not None and \
            name_of(self._resume_from) > Path(checkpoint.path).name
        if checkpoint is not None and not newer_on_storage:
            return _verified(checkpoint_directory(checkpoint, self.rank))
        if self._resume_from and is_uri(self._resume_from):  # storage_path is a URI: read it from there
            return _verified(checkpoint_directory(ray.train.Checkpoint(self._resume_from), self.rank))
        return _verified(self._resume_from) if self._resume_from else None

    def report(self, metrics: dict, checkpoint_dir: str | None = None) -> None:
        import ray.train

        checkpoint = None
        if checkpoint_dir:
            # Before Ray copies it: the manifest travels with the files it describes.
            write_manifest(checkpoint_dir, self.rank)
            checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir)
        ray.train.report(metrics, checkpoint=checkpoint)

