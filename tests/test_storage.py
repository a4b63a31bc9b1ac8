"""storage_path as a bucket: checkpoints written to and read back from an S3-compatible store.

The store is moto's S3 server on this machine (tests/object_store.py); pyarrow and Ray Train
reach it through an `s3://BUCKET/PREFIX?endpoint_override=...` URI, as they would a real bucket.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from interrupting import interrupt_at
from palimpsest.cli import app
from palimpsest.storage import MIRROR, RunStorage, StorageError, _upload, check_storage_path, filesystem, join, name_of
from palimpsest.manifest import LEFT_ON_STORAGE, MANIFEST, STATE_FILE, verify_checkpoint, write_manifest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--set", "methods=[replay]", "--set", "training.steps=40", "--set", "training.log_every=10",
        "--set", "scaling.num_workers=1"]


@pytest.fixture
def store(object_store):
    return object_store


# ----------------------------------------------------------------------------- the field


def test_storage_path_is_an_absolute_path_or_a_uri_with_a_known_scheme(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert check_storage_path("ckpt") == str(tmp_path / "ckpt")
    assert check_storage_path("s3://bucket/runs/") == "s3://bucket/runs"
    uri = "s3://bucket/runs?endpoint_override=127.0.0.1:9000&scheme=http"
    assert check_storage_path(uri) == uri  # its options kept whole
    assert check_storage_path("gs://bucket/runs") == "gs://bucket/runs"
    for bad, why in (("ftp://host/runs", "unknown scheme 'ftp'"), ("s3://", "no bucket"), ("  ", "empty"),
                     ("s3:/bucket/runs", "two slashes"), ("S3://bucket/runs", "lower case")):
        with pytest.raises(StorageError, match=why):
            check_storage_path(bad)
    # Paths under a URI keep its options at the end, where pyarrow reads them.
    assert join(uri, "run", "checkpoint_1") == \
        "s3://bucket/runs/run/checkpoint_1?endpoint_override=127.0.0.1:9000&scheme=http"
    assert name_of(join(uri, "run", "checkpoint_1")) == "checkpoint_1"
    assert join("/shared/runs", "run") == "/shared/runs/run"


def test_validate_names_the_field_of_a_bad_storage_uri(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text((ROOT / "jobs/quickstart.yaml").read_text() + "storage_path: ftp://host/runs\n")
    result = CliRunner().invoke(app, ["validate", str(job)], terminal_width=200)
    assert result.exit_code == 2 and "storage_path: ftp://host/runs: unknown scheme 'ftp'" in result.output, \
        result.output
    assert "Traceback" not in result.output


def test_a_bucket_that_cannot_be_written_is_refused_before_any_folder(store, tmp_path):
    store.uri("exists")
    missing = store.uri("exists").replace("s3://exists", "s3://missing-bucket")
    result = CliRunner().invoke(app, ["run", "jobs/quickstart.yaml", *TINY, "--set", f"storage_path={missing}",
                                      "--out", str(tmp_path / "run"), "--no-ray"], terminal_width=400)
    assert result.exit_code == 2, result.output
    assert "storage_path: s3://missing-bucket?" in result.output and "cannot write there" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- the mirror


def _checkpoint(directory: Path, payload: bytes) -> Path:
    directory.mkdir(parents=True)
    (directory / "model.safetensors").write_bytes(payload)
    (directory / "sub").mkdir()
    (directory / "sub" / "state.pt").write_bytes(payload[::-1])
    (directory / STATE_FILE).write_bytes(payload * 3)  # the trainer state: the bulk of a real checkpoint
    write_manifest(directory)
    return directory


def test_the_mirror_takes_whole_checkpoints_from_the_bucket_and_push_completes_the_bucket(store, tmp_path):
    base = store.uri("mirror", "runs")
    fs, path = filesystem(join(base, "run"))
    made = tmp_path / "made"
    # On the bucket: one whole checkpoint, one cut short before its manifest, one with a file
    # that differs from its manifest.
    _upload(_checkpoint(made / "checkpoint_000001", b"first" * 100), fs, f"{path}/checkpoint_000001")
    _upload(_checkpoint(made / "checkpoint_000002", b"second" * 100), fs, f"{path}/checkpoint_000002")
    fs.delete_file(f"{path}/checkpoint_000002/{MANIFEST}")
    _upload(_checkpoint(made / "checkpoint_000003", b"third" * 100), fs, f"{path}/checkpoint_000003")
    with fs.open_output_stream(f"{path}/checkpoint_000003/sub/state.pt") as sink:
        sink.write(b"changed")

    storage = RunStorage(base, tmp_path / "folder", "run")
    local = storage.pull()
    assert local == tmp_path / "folder" / MIRROR / "run"
    assert sorted(p.name for p in local.iterdir()) == ["checkpoint_000001"]  # no partial copies left
    assert (local / "checkpoint_000001" / "sub" / "state.pt").read_bytes() == (b"first" * 100)[::-1]
    # Workers on any node are given the bucket's copy, options included.
    assert storage.reference(str(local / "checkpoint_000001")) == join(base, "run", "checkpoint_000001")

    # A run without Ray writes into the mirror; push uploads what the bucket lacks whole: a new
    # checkpoint, one whose copy there was cut short, and one the bucket holds another version of
    # (same name, other manifest); it leaves whole ones alone.
    shutil.copytree(made / "checkpoint_000002", local / "checkpoint_000002")
    _checkpoint(local / "checkpoint_000004", b"fourth" * 100)
    _upload(_checkpoint(made / "checkpoint_000005", b"old" * 100), fs, f"{path}/checkpoint_000005")
    _checkpoint(local / "checkpoint_000005", b"new" * 100)
    before = store.files(f"{path}/checkpoint_000001")
    storage.push()
    for name in ("checkpoint_000002", "checkpoint_000004", "checkpoint_000005"):
        mine = {p.relative_to(local / name).as_posix(): p for p in (local / name).rglob("*") if p.is_file()}
        assert sorted(store.files(f"{path}/{name}")) == sorted(mine)
        for key, file in mine.items():
            assert store.read(f"{path}/{name}/{key}") == file.read_bytes(), (name, key)
    assert store.files(f"{path}/checkpoint_000001") == before
    # A fresh mirror now takes 1, 2, 4 and 5 (3 is still damaged on the bucket).
    again = RunStorage(base, tmp_path / "elsewhere", "run").pull()
    assert sorted(p.name for p in again.iterdir()) == ["checkpoint_000001", "checkpoint_000002", "checkpoint_000004",
                                                        "checkpoint_000005"]

    # A lean mirror (the driver under Ray) leaves each trainer state in the bucket, checked there by
    # size: one of the wrong size keeps its checkpoint out; a whole pull later fetches the rest.
    with fs.open_output_stream(f"{path}/checkpoint_000004/{STATE_FILE}") as sink:
        sink.write(b"short")
    lean = RunStorage(base, tmp_path / "driver", "run")
    mirror = lean.pull(lean=True)
    assert sorted(p.name for p in mirror.iterdir()) == ["checkpoint_000001", "checkpoint_000002", "checkpoint_000005"]
    assert not (mirror / "checkpoint_000001" / STATE_FILE).exists()
    assert verify_checkpoint(mirror / "checkpoint_000001", require_manifest=True)
    assert (mirror / "checkpoint_000001" / "model.safetensors").read_bytes() == b"first" * 100
    lean.pull()
    assert (mirror / "checkpoint_000001" / STATE_FILE).read_bytes() == b"first" * 300
    assert not (mirror / "checkpoint_000001" / LEFT_ON_STORAGE).exists()


# ----------------------------------------------------------------------------- a whole run


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "palimpsest.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.cluster  # the resumed run (a CLI subprocess) starts a local Ray of its own
def test_a_run_keeps_its_checkpoints_and_folder_in_the_bucket_and_resumes_from_it(store, tmp_path):
    """Ctrl-C in task 2 of a run without Ray: the bucket holds task 1's checkpoint and the interrupted
    folder. With the local folder gone, --resume of the bucket's copy fetches the folder (not the
    checkpoints) and, under Ray, hands its workers the checkpoint's URI: they download it and end
    where an undisturbed run ends."""
    base = store.uri("runs", "palimpsest")
    code, output, hit = interrupt_at(["run", "jobs/quickstart.yaml", *TINY, "--set", f"storage_path={base}",
                                      "--out", str(tmp_path / "cut"), "--no-ray"], ROOT,
                                     lambda line: "task 2/3 step 20/40" in line)
    assert hit is not None and code == 130, output[-3000:]
    assert json.loads(store.read("runs/palimpsest/cut/summary.json"))["status"] == "interrupted"
    saved = [name.split("/")[0] for name in store.files("runs/palimpsest/cut") if name.endswith(MANIFEST)]
    assert saved == ["checkpoint_000001"], saved  # task 1's end, whole
    assert f"palimpsest run --resume '{join(base, 'cut')}'" in output  # said where it can resume from
    shutil.rmtree(tmp_path / "cut")  # as if on another machine: only the bucket has the run

    resumed = _run(["run", "--resume", join(base, "cut"), "--out", str(tmp_path / "again")])
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "task 1/3" not in resumed.stdout and "task 2/3 step 10/40" in resumed.stdout
    local = tmp_path / "again" / "cut"
    assert f"fetched {join(base, 'cut')} into {local}" in resumed.stdout
    # the undisturbed run, in this process (the same loop: one worker computes what one Ray worker did)
    clean = CliRunner().invoke(app, ["run", str(ROOT / "jobs" / "quickstart.yaml"), *TINY, "--set",
                                     f"storage_path={base}", "--out", str(tmp_path / "clean"), "--no-ray"])
    assert clean.exit_code == 0, clean.output[-3000:]

    summaries = {name: json.loads(store.read(f"runs/palimpsest/{name}/summary.json")) for name in ("cut", "clean")}
    assert summaries["cut"] == json.loads((local / "summary.json").read_text())
    assert summaries["cut"]["status"] == "ok"
    assert summaries["cut"]["storage"] == {"checkpoints": base, "run_folder": join(base, "cut")}
    assert summaries["cut"]["methods"]["replay"]["accuracy_matrix"] == \
        summaries["clean"]["methods"]["replay"]["accuracy_matrix"]
    files = store.files("runs/palimpsest/cut")
    assert sum(name.endswith(MANIFEST) for name in files) == 3  # a checkpoint per task end
    assert {"spec.yaml", "env.json", "metrics.jsonl", "report.md"} <= set(files)
    assert not any(name.startswith(MIRROR) for name in files)
    assert not (local / MIRROR).exists()  # finished: the bucket holds the checkpoints
    assert (local / "checkpoints" / "replay" / "task-2" / "model.safetensors").is_file()
    # A finished run is not resumed again; a prefix without a run folder is named.
    for uri, why in ((join(base, "cut"), "already finished"), (join(base, "nothing"), "no run folder there")):
        refused = CliRunner().invoke(app, ["run", "--resume", uri, "--out", str(tmp_path / "more")])
        assert refused.exit_code == 2 and why in refused.output and "Traceback" not in refused.output, \
            refused.output
    assert not (tmp_path / "more").exists()
