"""Where a run's Ray Train checkpoints live: a local (or mounted) path, or an object-store URI.

`storage_path` in a job is either an absolute path (shared storage on a cluster: EFS, NFS)
or a URI that pyarrow opens (`s3://bucket/prefix`, `gs://bucket/prefix`; query options such
as `?endpoint_override=host:port&scheme=http` for an S3-compatible store are kept). Ray Train
writes the checkpoints there itself and a restarted worker on any node reads them back.

The run folder is written as files renamed into place, which an object store cannot do, so
with a URI it stays on the driver's disk while the run goes on and is uploaded beside the
checkpoints when the run ends (`upload_run_folder`): everything of run NAME is under
`STORAGE/NAME/`. The driver reads checkpoints through a local mirror
(`RUN_FOLDER/.storage-mirror/`), into which each complete checkpoint is downloaded once.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

logger = logging.getLogger(__name__)

# What pyarrow opens and Ray Train documents for storage_path.
SCHEMES = ("s3", "gs", "gcs", "hdfs", "abfs", "abfss", "file")
MIRROR = ".storage-mirror"


class StorageError(ValueError):
    """A storage_path that cannot be used."""


def is_uri(value: str | None) -> bool:
    return bool(value) and "://" in value


def check_storage_path(value: str | None, field: str | None = None) -> str | None:
    """A local path made absolute (so `run --resume` elsewhere finds it), or a URI with a known scheme.

    No network access: the store is reached when the run starts.
    """
    if value is None:
        return None
    where = f"{field}: " if field else ""
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:/(?!/)", value):  # s3:/bucket, a slash short of a URI
        raise StorageError(f"{where}{value}: a URI needs two slashes after the scheme ({value.split(':')[0]}://...)")
    if not is_uri(value):
        if not value.strip():
            raise StorageError(f"{where}empty; give an absolute path or a URI ({', '.join(SCHEMES[:2])}://...)")
        return str(Path(value).expanduser().resolve())
    parts = urlsplit(value)
    if value.split("://")[0] != parts.scheme:
        raise StorageError(f"{where}{value}: write the scheme in lower case ({parts.scheme}://...)")
    if parts.scheme not in SCHEMES:
        raise StorageError(f"{where}{value}: unknown scheme {parts.scheme!r}; give a path, or a URI with one of "
                           f"{', '.join(s + '://' for s in SCHEMES)}")
    if parts.scheme != "file" and not parts.netloc:
        raise StorageError(f"{where}{value}: no bucket; give {parts.scheme}://BUCKET/PREFIX")
    return value.rstrip("/") if not parts.query else value


def join(base: str, *names: str) -> str:
    """`base`/names..., keeping a URI's query (its options) at the end."""
    if not is_uri(base):
        return str(Path(base, *names))
    parts = urlsplit(base)
    path = "/".join([parts.path.rstrip("/"), *names])
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def name_of(reference: str) -> str:
    """The last path component of a path or URI (a checkpoint's folder name)."""
    return Path(urlsplit(reference).path if is_uri(reference) else reference).name


def filesystem(uri: str):
    """(pyarrow filesystem, path on it) for a URI."""
    import pyarrow.fs

    try:
        return pyarrow.fs.FileSystem.from_uri(uri)
    except Exception as error:  # pyarrow raises ArrowInvalid / OSError for what it cannot open
        raise StorageError(f"storage_path: {uri}: {error}") from None


def check_writable(uri: str) -> None:
    """Write and delete a marker under `uri`: the bucket exists and these credentials may write it.

    Before a run folder exists, so a wrong bucket or missing credentials end the command with
    one line (an unreachable endpoint takes a few seconds of the client's retries).
    """
    fs, path = filesystem(uri)
    marker = f"{path.rstrip('/')}/.palimpsest-write-check-{uuid.uuid4().hex}"  # concurrent runs: one each
    try:
        with fs.open_output_stream(marker) as sink:
            sink.write(b"ok")
    except OSError as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise StorageError(f"storage_path: {uri}: cannot write there ({first}); check the bucket's name and this "
                           "machine's credentials (instance role, AWS_* or GOOGLE_APPLICATION_CREDENTIALS)") from None
    try:
        fs.delete_file(marker)
    except OSError as error:  # writing is what a run needs; a policy may not allow deleting
        logger.warning("could not delete %s/%s (%s)", uri, marker.rsplit("/", 1)[1], error)


class RunStorage:
    """One Ray Train run's checkpoints: `ROOT/RUN_NAME/checkpoint_*`.

    `local` is where the driver reads them: the storage itself for a path, the run folder's
    mirror for a URI (`pull` refreshes it). `ray_path` is what RunConfig(storage_path=) gets.
    """

    def __init__(self, storage_path: str | None, folder: Path, run_name: str):
        self.run_name = run_name
        if storage_path is None:
            self.ray_path = str(Path(folder) / "ray")
        else:
            self.ray_path = storage_path if is_uri(storage_path) else str(Path(storage_path).resolve())
        self.remote = is_uri(self.ray_path)
        self.local = (Path(folder) / MIRROR / run_name) if self.remote else Path(self.ray_path) / run_name
        self.where = join(self.ray_path, run_name)  # where the checkpoints are, for people

    def reference(self, local_checkpoint: str | None) -> str | None:
        """What a worker on any node can open: the URI of a mirrored checkpoint (else the path itself)."""
        if local_checkpoint is None or not self.remote:
            return local_checkpoint
        return join(self.where, name_of(local_checkpoint))

    def _listing(self) -> tuple[object, list[str]]:
        import pyarrow.fs

        fs, path = filesystem(self.where)
        infos = fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
        names = sorted(i.base_name for i in infos
                       if i.type == pyarrow.fs.FileType.Directory and i.base_name.startswith("checkpoint_"))
        return (fs, path), names

    def pull(self, *, lean: bool = False) -> Path:
        """Download every complete checkpoint the mirror lacks (a copy cut short stays out); return `local`.

        `lean`: leave the trainer state (optimizer and all, the bulk of an LLM checkpoint) in the
        bucket, checked there by size: the driver exports models and reads positions, and Ray
        Train's workers read a resume from the bucket themselves. A run without Ray resumes
        from the mirror and pulls whole copies (lean ones are fetched again).
        """
        if not self.remote:
            return self.local
        from palimpsest.manifest import LEFT_ON_STORAGE, STATE_FILE, CheckpointCorruptError, verify_checkpoint

        (fs, path), names = self._listing()
        self.local.mkdir(parents=True, exist_ok=True)
        for name in names:
            target = self.local / name
            if target.is_dir() and (lean or not (target / LEFT_ON_STORAGE).is_file()):
                continue
            partial = self.local / f".{name}.partial"
            shutil.rmtree(partial, ignore_errors=True)
            left = _download(fs, f"{path}/{name}", partial, skip=lambda relative: lean and relative == STATE_FILE)
            if left:
                (partial / LEFT_ON_STORAGE).write_text(json.dumps(left))
            try:
                verify_checkpoint(partial, require_manifest=True)
            except (CheckpointCorruptError, FileNotFoundError) as error:
                logger.warning("%s/%s is not complete on storage; not used (%s)", self.where, name, error)
                shutil.rmtree(partial, ignore_errors=True)
                continue
            shutil.rmtree(target, ignore_errors=True)  # a lean copy replaced by a whole one
            partial.rename(target)
        return self.local

    def push(self) -> None:
        """Upload the mirror's checkpoints that storage lacks whole (a run without Ray writes into the mirror)."""
        if not self.remote or not self.local.is_dir():
            return
        from palimpsest.manifest import MANIFEST

        fs, path = filesystem(self.where)
        for directory in sorted(p for p in self.local.glob("checkpoint_*") if p.is_dir()):
            if _read(fs, f"{path}/{directory.name}/{MANIFEST}") != (directory / MANIFEST).read_bytes():
                _upload(directory, fs, f"{path}/{directory.name}")  # absent, cut short, or another one


def _read(fs, path: str) -> bytes | None:
    import pyarrow.fs

    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(path) as stream:
        return stream.read()


def _download(fs, path: str, target: Path, skip=lambda relative: False) -> dict[str, int]:
    """Every file under `path` on `fs` into `target` (folders made as needed), but those whose relative
    path `skip` names; returns the files skipped, relative path -> size on `fs`."""
    import pyarrow.fs

    infos = fs.get_file_info(pyarrow.fs.FileSelector(path, recursive=True))
    target.mkdir(parents=True)
    skipped = {}
    for info in infos:
        if info.type != pyarrow.fs.FileType.File:
            continue
        relative = info.path[len(path.rstrip("/")) + 1:]
        if skip(relative):
            skipped[relative] = info.size
            continue
        local = target / relative
        local.parent.mkdir(parents=True, exist_ok=True)
        with fs.open_input_stream(info.path) as source, open(local, "wb") as sink:
            shutil.copyfileobj(source, sink, 1 << 20)
    return skipped


def _upload(directory: Path, fs, path: str, skip: str | None = None) -> None:
    """Every file under `directory` to `path` on `fs`, manifests last: a copy cut short has none.

    `skip`: a folder name left out wherever it occurs (a search's trials have mirrors too).
    """
    from palimpsest.manifest import MANIFEST_GLOB

    files = sorted(p for p in directory.rglob("*") if p.is_file())
    files.sort(key=lambda p: p.match(MANIFEST_GLOB))  # stable: the manifests go last
    for file in files:
        relative = file.relative_to(directory)
        if skip is not None and skip in relative.parts[:-1]:
            continue
        target = f"{path}/{relative.as_posix()}"
        fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        with open(file, "rb") as source, fs.open_output_stream(target) as sink:
            shutil.copyfileobj(source, sink, 1 << 20)


def upload_run_folder(folder: Path, storage_path: str) -> str:
    """Copy the run folder (not the mirror) to STORAGE/FOLDER_NAME/; return that URI.

    Each file is written whole (an object store has no half-written objects); an upload cut
    short leaves older copies, and the next end of the run (a resume's) uploads again.
    """
    folder = Path(folder)
    destination = join(storage_path, folder.name)
    fs, path = filesystem(destination)
    _upload(folder, fs, path, skip=MIRROR)
    return destination


# Ray Train's checkpoint folders (and the loop's own, without Ray): read from storage itself, never fetched.
_CHECKPOINT_DIR = re.compile(r"checkpoint_(\d+|\d{4}-\d\d-\d\d_[\d.-]+)")


def read_text(uri: str) -> str | None:
    """A small file on storage (None if there is none)."""
    fs, path = filesystem(uri)
    found = _read(fs, path)
    return None if found is None else found.decode()


def fetch_run_folder(uri: str, destination: Path) -> None:
    """An uploaded run folder back onto this machine, without the checkpoints kept beside it (a resume
    reads those from storage). Fetched under a temporary name, then renamed: never half there."""
    fs, path = filesystem(uri)
    destination = Path(destination)
    partial = destination.with_name(f".{destination.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)

    def elsewhere(relative: str) -> bool:
        folders = relative.split("/")[:-1]
        return MIRROR in folders or any(_CHECKPOINT_DIR.fullmatch(part) for part in folders)

    _download(fs, path, partial, skip=elsewhere)
    if destination.exists():
        destination.rmdir()  # empty: checked by the caller
    partial.rename(destination)


def finish_upload(folder: Path, storage_path: str, *, finished: bool) -> str:
    """The run folder to STORAGE/NAME/ at a run's end; a finished run's mirrors go (its checkpoints are on
    storage and exported into the folder). Returns where it went; raises what the upload raised."""
    where = upload_run_folder(folder, storage_path)
    if finished:
        drop_mirror(folder)
    return where


def drop_mirror(folder: Path) -> None:
    """A finished run's mirrors (a sweep's points have their own): the checkpoints are on storage and
    exported into checkpoints/."""
    for mirror in sorted(Path(folder).rglob(MIRROR)):
        shutil.rmtree(mirror, ignore_errors=True)
