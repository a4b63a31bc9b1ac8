"""Checkpoint manifests: what a complete copy of a checkpoint directory holds (torch-free).

Every checkpoint directory a session persists carries a manifest (`MANIFEST`: name, size
and sha256 of each file), written before the directory is handed over; a session resumes
only from a directory whose files match it. `palimpsest.storage` checks a bucket's copy
against the same manifests, so this module imports neither torch nor the training code.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

STATE_FILE = "trainer_state.pt"  # the loop's own state in a checkpoint (optimizer, sampler, accountant)
MANIFEST = "checkpoint_manifest.json"  # in every reported checkpoint: what a complete copy holds
# A rank other than 0 that reports a directory (sharded checkpoints, merged by Ray into one)
# writes its own `checkpoint_manifest.rank<N>.json`; this pattern matches every manifest.
MANIFEST_GLOB = "checkpoint_manifest*.json"
# In a driver's copy of a checkpoint that lives in a bucket (palimpsest.storage): the files left
# there, with the sizes the bucket listed. They count as present when those sizes are the manifest's.
LEFT_ON_STORAGE = "left_on_storage.json"

class CheckpointCorruptError(RuntimeError):
    """A checkpoint directory does not hold what its manifest says (partial copy, damaged file)."""

    def __init__(self, directory: str | Path, problems: list[str]):
        self.directory, self.problems = str(directory), list(problems)
        super().__init__(f"checkpoint {directory} is incomplete or corrupt, refusing to resume from it: "
                         + "; ".join(problems))


def _manifest_name(rank: int) -> str:
    return MANIFEST if rank == 0 else f"checkpoint_manifest.rank{rank}.json"


def _is_manifest(relative: str) -> bool:
    return re.fullmatch(r"checkpoint_manifest(\.rank\d+)?\.json", relative) is not None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: str | Path, rank: int = 0) -> Path:
    """Record every file under `directory` (recursively, manifests excepted) in its manifest."""
    directory = Path(directory)
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        relative = path.relative_to(directory).as_posix()
        if not _is_manifest(relative):
            files[relative] = {"size": path.stat().st_size, "sha256": _sha256(path)}
    target = directory / _manifest_name(rank)
    partial = target.with_name(f".{target.name}.partial")
    partial.write_text(json.dumps({"format": 1, "rank": rank, "files": files}, indent=1))
    partial.replace(target)  # the manifest itself is never seen half-written in the source
    return target


def verify_checkpoint(directory: str | Path, *, require_manifest: bool = False) -> bool:
    """Check `directory` against its manifest(s).

    Returns True when verified, False when the directory has no manifest (a checkpoint
    written before manifests existed: nothing to check it against).

    `require_manifest`: treat a missing manifest as incomplete. Use it when scanning
    storage for checkpoints yourself: a copy that a crash cut short may lack the manifest
    (Ray copies the files in no fixed order) and would otherwise pass as an old checkpoint.

    Raises:
        CheckpointCorruptError: a manifest is unreadable or (with `require_manifest`)
            missing, or a file it lists is missing or differs in size or content.
        FileNotFoundError: `directory` is not a directory.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint {directory} does not exist (or is not a directory)")
    manifests = sorted(directory.glob(MANIFEST_GLOB))
    if not manifests:
        if require_manifest:
            raise CheckpointCorruptError(directory, [f"{MANIFEST} is missing"])
        return False
    left = directory / LEFT_ON_STORAGE
    elsewhere = json.loads(left.read_text()) if left.is_file() else {}
    problems = []
    for manifest in manifests:
        try:
            files = json.loads(manifest.read_text())["files"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            problems.append(f"{manifest.name} is unreadable ({type(error).__name__}: {error})")
            continue
        for relative, expected in files.items():
            path = directory / relative
            if not path.is_file() and relative in elsewhere:
                if elsewhere[relative] != expected["size"]:
                    problems.append(f"{relative} has {elsewhere[relative]} bytes on storage, {manifest.name} says "
                                    f"{expected['size']}")
            elif not path.is_file():
                problems.append(f"{relative} is missing")
            elif (size := path.stat().st_size) != expected["size"]:
                problems.append(f"{relative} has {size} bytes, {manifest.name} says {expected['size']}")
            elif _sha256(path) != expected["sha256"]:
                problems.append(f"{relative} does not match the sha256 in {manifest.name}")
    if problems:
        raise CheckpointCorruptError(directory, problems)
    return True


