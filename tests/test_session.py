"""Train sessions: checkpoints carry a manifest, and a restart never reads a partial checkpoint."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from palimpsest.manifest import MANIFEST, CheckpointCorruptError, verify_checkpoint, write_manifest
from palimpsest.train.session import REPORTED_METRICS, LocalSession, checkpoint_directory


def make_checkpoint_dir(path: Path, step: int = 5) -> Path:
    """What `_Run.save` hands to a session: a model file and the trainer state."""
    path.mkdir(parents=True)
    torch.save({"step": step, "weights": torch.arange(20_000, dtype=torch.float32) + step}, path / "trainer_state.pt")
    (path / "config.json").write_text(json.dumps({"hidden": 8}))
    (path / "sub").mkdir()
    (path / "sub" / "shard.bin").write_bytes(bytes(range(256)) * 4)
    return path


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_manifest_refuses_a_truncated_trainer_state(tmp_path):
    ckpt = make_checkpoint_dir(tmp_path / "ckpt")
    write_manifest(ckpt)
    assert verify_checkpoint(ckpt) is True
    files = json.loads((ckpt / MANIFEST).read_text())["files"]
    assert set(files) == {"trainer_state.pt", "config.json", "sub/shard.bin"}

    truncate(ckpt / "trainer_state.pt")
    with pytest.raises(CheckpointCorruptError) as caught:
        verify_checkpoint(ckpt)
    message = str(caught.value)
    assert str(ckpt) in message and "trainer_state.pt" in message and "bytes" in message
    assert caught.value.directory == str(ckpt)


def test_manifest_refuses_changed_missing_files_and_a_torn_manifest(tmp_path):
    ckpt = make_checkpoint_dir(tmp_path / "ckpt")
    write_manifest(ckpt)
    (ckpt / "sub" / "shard.bin").write_bytes(bytes(1024))  # same size, other content
    (ckpt / "config.json").unlink()
    with pytest.raises(CheckpointCorruptError) as caught:
        verify_checkpoint(ckpt)
    assert any("sub/shard.bin" in p and "sha256" in p for p in caught.value.problems)
    assert any("config.json is missing" in p for p in caught.value.problems)

    torn = make_checkpoint_dir(tmp_path / "torn")
    truncate(write_manifest(torn), 0.3)
    with pytest.raises(CheckpointCorruptError, match="unreadable"):
        verify_checkpoint(torn)


def test_a_checkpoint_without_manifest_is_accepted_unverified(tmp_path):
    ckpt = make_checkpoint_dir(tmp_path / "old")  # written before manifests existed
    assert verify_checkpoint(ckpt) is False
    with pytest.raises(CheckpointCorruptError, match=f"{MANIFEST} is missing"):
        verify_checkpoint(ckpt, require_manifest=True)  # what a storage scan should demand
    session = LocalSession(tmp_path / "root", resume_from=str(ckpt))
    assert session.latest_checkpoint() == str(ckpt)
    with pytest.raises(FileNotFoundError):
        verify_checkpoint(tmp_path / "nowhere")


def test_a_sharded_report_writes_one_manifest_per_rank(tmp_path):
    """Ranks reporting their own files into one merged checkpoint never write the same manifest."""
    merged = make_checkpoint_dir(tmp_path / "merged")
    write_manifest(merged, rank=0)
    (merged / "rank1-shard.pt").write_bytes(b"x" * 100)
    write_manifest(merged, rank=1)
    assert sorted(p.name for p in merged.glob("checkpoint_manifest*")) == [
        "checkpoint_manifest.json", "checkpoint_manifest.rank1.json"]
    assert verify_checkpoint(merged)
    truncate(merged / "rank1-shard.pt")
    with pytest.raises(CheckpointCorruptError, match="rank1-shard.pt"):
        verify_checkpoint(merged)


def test_local_session_round_trip(tmp_path):
    root = tmp_path / "root"
    session = LocalSession(root, device="cpu")
    assert session.latest_checkpoint() is None
    for step in (5, 10):
        session.report({"step": step, "loss": 1.0 / step}, checkpoint_dir=str(make_checkpoint_dir(tmp_path / f"s{step}", step)))
    session.report({"step": 11})  # metrics only
    latest = Path(session.latest_checkpoint())
    assert latest == root / "checkpoint_000002"
    assert torch.load(latest / "trainer_state.pt", weights_only=False)["step"] == 10
    assert (latest / MANIFEST).is_file() and verify_checkpoint(latest)
    assert json.loads((latest / REPORTED_METRICS).read_text())["step"] == 10
    assert [m["step"] for m in session.reports] == [5, 10, 11]
    assert not list(root.glob(".*partial"))

    # a new attempt in the same folder picks up the checkpoints and continues their numbering
    again = LocalSession(root, resume_from=str(latest), device="cpu")
    assert [metrics["step"] for _, metrics in again.checkpoints] == [5, 10]
    assert again.latest_checkpoint() == str(latest)
    again.report({"step": 15}, checkpoint_dir=str(make_checkpoint_dir(tmp_path / "s15", 15)))
    assert again.latest_checkpoint() == str(root / "checkpoint_000003")


def test_local_session_refuses_a_truncated_resume_from(tmp_path):
    ckpt = tmp_path / "elsewhere"
    LocalSession(ckpt, device="cpu").report({"step": 5}, checkpoint_dir=str(make_checkpoint_dir(tmp_path / "s5")))
    truncate(ckpt / "checkpoint_000001" / "trainer_state.pt")
    session = LocalSession(tmp_path / "root", resume_from=str(ckpt / "checkpoint_000001"), device="cpu")
    with pytest.raises(CheckpointCorruptError, match="checkpoint_000001"):
        session.latest_checkpoint()


def test_local_session_falls_back_to_the_previous_complete_checkpoint(tmp_path):
    root = tmp_path / "root"
    first = LocalSession(root, device="cpu")
    for step in (5, 10):
        first.report({"step": step}, checkpoint_dir=str(make_checkpoint_dir(tmp_path / f"s{step}", step)))
    truncate(root / "checkpoint_000002" / "trainer_state.pt")

    session = LocalSession(root, resume_from=str(root / "checkpoint_000002"), device="cpu")
    resumed = session.latest_checkpoint()
    assert resumed == str(root / "checkpoint_000001")
    assert torch.load(Path(resumed) / "trainer_state.pt", weights_only=False)["step"] == 5
    assert (root / ".checkpoint_000002.corrupt").is_dir()  # kept for a post-mortem, out of the way
    assert [m["step"] for _, m in session.checkpoints] == [5]
    session.report({"step": 10}, checkpoint_dir=str(make_checkpoint_dir(tmp_path / "s10b", 10)))
    assert session.latest_checkpoint() == str(root / "checkpoint_000002")
    assert [m["step"] for _, m in LocalSession(root).checkpoints] == [5, 10]

    truncate(root / "checkpoint_000002" / "trainer_state.pt")  # damaged again, under the same number
    assert LocalSession(root, resume_from=str(root / "checkpoint_000002")).latest_checkpoint() == resumed
    assert (root / ".checkpoint_000002.corrupt1").is_dir()


def test_local_session_numbering_skips_past_a_gap(tmp_path):
    root = tmp_path / "root"
    session = LocalSession(root, device="cpu")
    for step in (1, 2, 3):
        session.report({"step": step}, checkpoint_dir=str(make_checkpoint_dir(tmp_path / f"s{step}", step)))
    (root / "checkpoint_000002").rename(root / ".checkpoint_000002.corrupt")
    session.report({"step": 4}, checkpoint_dir=str(make_checkpoint_dir(tmp_path / "s4", 4)))
    assert session.latest_checkpoint() == str(root / "checkpoint_000004")


def test_ranks_never_share_a_checkpoint_download_directory(tmp_path):
    """The race behind 'PytorchStreamReader failed reading file data/N': `to_directory()` with
    no path gives every unpickled copy of one Checkpoint the same /tmp directory, and a late
    rank downloads again into it while an early one reads."""
    import pyarrow.fs
    from ray.train import Checkpoint

    persisted = make_checkpoint_dir(tmp_path / "storage" / "checkpoint_2026")
    write_manifest(persisted)
    before = (persisted / "trainer_state.pt").stat()

    local = pickle.loads(pickle.dumps(Checkpoint.from_directory(str(persisted))))
    assert checkpoint_directory(local, rank=0) == checkpoint_directory(local, rank=1) == str(persisted)
    after = (persisted / "trainer_state.pt").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # read in place

    # a filesystem that is not local (as s3:// would be): each rank downloads on its own
    remote = Checkpoint("checkpoint_2026", filesystem=pyarrow.fs.SubTreeFileSystem(
        str(tmp_path / "storage"), pyarrow.fs.LocalFileSystem()))
    blob = pickle.dumps(remote)
    rank0 = checkpoint_directory(pickle.loads(blob), rank=0)
    rank1 = checkpoint_directory(pickle.loads(blob), rank=1)
    assert rank0 != rank1
    shared = pickle.loads(blob).to_directory()  # Ray's default: one /tmp directory for every copy
    try:
        assert pickle.loads(blob).to_directory() == shared
    finally:
        shutil.rmtree(shared, ignore_errors=True)
    for directory in (rank0, rank1):
        assert verify_checkpoint(directory)

    with pytest.raises(FileNotFoundError, match="shared storage"):
        checkpoint_directory(Checkpoint.from_directory(str(tmp_path / "not-on-this-node")), rank=0)


@pytest.mark.integration
def test_ray_worker_failure_restarts_both_ranks_from_the_verified_checkpoint(tmp_path, ray_session):
    """A real 2-worker TorchTrainer: rank 0 reports a checkpoint (with its manifest), dies; after the
    restart every rank gets Ray's persisted directory itself, verified, and loads the same state."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    marker, out = tmp_path / "failed-once", tmp_path / "ranks"
    out.mkdir()

    def train(config):  # a local function: cloudpickle ships it by value to the workers
        import tempfile

        import torch

        from palimpsest.train.session import RaySession

        session = RaySession()
        resumed = session.latest_checkpoint()
        if resumed is None:
            with tempfile.TemporaryDirectory() as tmp:
                if session.rank == 0:
                    torch.save({"step": 5, "weights": torch.arange(200_000, dtype=torch.float32)},
                               Path(tmp) / "trainer_state.pt")
                    session.report({"step": 5}, checkpoint_dir=tmp)
                else:
                    session.report({"step": 5})
            if session.rank == 0 and not Path(config["marker"]).exists():
                Path(config["marker"]).write_text("failed once\n")
                raise RuntimeError("injected worker failure")
            session.report({"step": 6})
            return None
        state = torch.load(Path(resumed) / "trainer_state.pt", map_location="cpu", weights_only=False)
        Path(config["out"], f"rank{session.rank}.json").write_text(json.dumps(
            {"dir": resumed, "step": state["step"], "sum": float(state["weights"].sum())}))
        session.report({"step": state["step"] + 1})
        return state["step"]

    trainer = TorchTrainer(
        train, train_loop_config={"marker": str(marker), "out": str(out)},
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name="session-fault", storage_path=str(tmp_path / "ray"),
                             failure_config=FailureConfig(max_failures=1)),
    )
    result = trainer.fit()
    assert marker.exists(), "the failure was not injected"
    assert result.return_value == 5
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    persisted = Path(result.checkpoint.path)
    assert {r["dir"] for r in ranks} == {str(persisted)}  # read in place, no shared /tmp download
    assert [r["step"] for r in ranks] == [5, 5] and ranks[0]["sum"] == ranks[1]["sum"]
    assert (persisted / MANIFEST).is_file() and verify_checkpoint(persisted)


@pytest.mark.integration
def test_a_local_ray_has_train_poll_its_workers_ten_times_a_second(ray_session):
    """Ray Train's controller reads its poll interval from its own process's environment (a worker's, like this
    task's); at Ray's 2 s every report waited for the poll (a 20-step fit: 22.9 s against 13.6-14.2 s)."""
    from palimpsest.ray_connection import LOCAL_POLL_S

    @ray_session.remote(num_cpus=0)
    def interval():
        import os

        return os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S")

    assert ray_session.get(interval.remote()) == str(LOCAL_POLL_S) and LOCAL_POLL_S < 2.0
