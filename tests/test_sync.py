"""Resume checkpoints that travel (issue 21): what a checkpoint holds and refuses, when a sync is due, and how the
store's copy is brought back into a work folder. A real SQLite store and real files; the two-machine fault test
is tests/test_machines.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from salt_exp.config.schema import SyncConfig
from salt_exp.contract import FoldStatus
from salt_exp.errors import SaltError
from salt_exp.tracking import RunTracker
from salt_exp.train.hooks import CheckpointSaved, HookBase, RunEnd
from salt_exp.train.state import (
                                  CheckpointIdentity,
                                  RunState,
                                  SnapshotRef,
                                  load_state,
                                  read_identity,
                                  save_state,
                                  travelling_files,
)
from salt_exp.train.sync import CheckpointSync, restore, sync_enabled


def _parts() -> dict:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    return {"model": model, "optimizer": opt, "scaler": torch.amp.GradScaler("cpu", enabled=False)}


def _checkpoint(folder: Path, epochs: int, *, identity: CheckpointIdentity | None = None,
                unpublished: bool = True) -> RunState:
    """A work folder as a fold run leaves it after ``epochs`` epochs of 1-epoch cycles: last.pt, precision.json,
    and the best snapshot of the cycle in progress (published cycles' files are gone)."""
    folder.mkdir(parents=True, exist_ok=True)
    state = RunState(epochs_done=epochs, step=10 * epochs, max_lr=0.1, published=list(range(epochs - 1)))
    if unpublished:
        weights, oof = folder / f"cycle{epochs - 1}_epoch{epochs - 1}.pt", folder / f"cycle{epochs - 1}_epoch{epochs - 1}.oof.npy"
        torch.save({"state_dict": {"w": torch.ones(2)}}, weights)
        oof.write_bytes(b"\x93NUMPY fake oof")
        state.best[epochs - 1] = SnapshotRef(cycle=epochs - 1, epoch=epochs - 1, val_map=0.5, val_best_thr=0.5,
                                             val_map_best_thr=0.5, weights=str(weights), oof=str(oof))
    (folder / "precision.json").write_text('{"precision": "fp32"}')
    save_state(folder / "last.pt", state, identity=identity, **_parts())
    return state


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_a_checkpoint_loads_weights_only_refuses_another_config_and_warns_for_another_commit(tmp_path):
    mine = CheckpointIdentity(config_hash="aaaaaaaaaaaa", commit="1111111")
    _checkpoint(tmp_path / "w", 2, identity=mine)
    last = tmp_path / "w" / "last.pt"
    payload = torch.load(last, weights_only=True)  # plain tensors and metadata: no pickled code
    assert payload["identity"] == {"config_hash": "aaaaaaaaaaaa", "commit": "1111111"}
    assert read_identity(last) == (2, mine)

    state, warning = load_state(last, identity=mine, **_parts())
    assert state.epochs_done == 2 and warning == ""
    with pytest.raises(SaltError) as refused:
        load_state(last, identity=CheckpointIdentity("bbbbbbbbbbbb", "1111111"), **_parts())
    line = str(refused.value)
    assert "\n" not in line and str(last) in line and "aaaaaaaaaaaa" in line and "bbbbbbbbbbbb" in line, line
    _, warning = load_state(last, identity=CheckpointIdentity("aaaaaaaaaaaa", "2222222"), **_parts())
    assert "1111111" in warning and "2222222" in warning and "\n" not in warning, warning

    # moved to another machine's folder: the snapshot paths follow the checkpoint
    moved = tmp_path / "elsewhere"
    (tmp_path / "w").rename(moved)
    state, _ = load_state(moved / "last.pt", identity=mine, **_parts())
    assert Path(state.best[1].weights).parent == moved and Path(state.best[1].weights).is_file()


def test_a_checkpoint_written_before_identities_still_resumes(tmp_path):
    """Format 1 (before issue 21): numpy's RNG tuple pickled inside, no identity. A run killed before the upgrade
    continues after it; only numpy's array types are allowed besides plain tensors."""
    from dataclasses import asdict

    import numpy as np

    parts = _parts()
    np.random.seed(11)
    old = tmp_path / "last.pt"
    torch.save({"state": {**asdict(RunState(epochs_done=4)), "best": {}}, "model": parts["model"].state_dict(),
                "optimizer": parts["optimizer"].state_dict(), "scaler": parts["scaler"].state_dict(),
                "torch_rng": torch.get_rng_state(), "numpy_rng": np.random.get_state()}, old)
    expected = np.random.rand(3)
    np.random.seed(0)
    state, warning = load_state(old, identity=CheckpointIdentity("aaaaaaaaaaaa", "1111111"), **_parts())
    assert state.epochs_done == 4 and warning == "" and read_identity(old) == (4, None)
    assert np.array_equal(np.random.rand(3), expected)  # numpy's RNG continues where it was saved


def test_what_travels_is_the_checkpoint_its_precision_and_the_unpublished_snapshots(tmp_path):
    state = _checkpoint(tmp_path, 3)
    names = [p.name for p in travelling_files(tmp_path, state)]
    assert names == ["last.pt", "precision.json", "cycle2_epoch2.pt", "cycle2_epoch2.oof.npy"]
    state.published.append(2)  # published: registered in the store, it need not travel
    assert [p.name for p in travelling_files(tmp_path, state)] == ["last.pt", "precision.json"]


def test_auto_syncs_only_when_the_artifacts_are_not_on_this_disk():
    auto = SyncConfig()
    assert sync_enabled(auto, "mlflow-artifacts:/1/abc/artifacts")
    assert sync_enabled(auto, "s3://bucket/mlruns/1/abc/artifacts")
    assert not sync_enabled(auto, "file:///work/mlruns/artifacts/1/abc/artifacts")
    assert not sync_enabled(auto, "/work/mlruns/artifacts/1/abc/artifacts")
    assert sync_enabled(SyncConfig(mode="always"), "file:///x") and not sync_enabled(SyncConfig(mode="never"), "s3://b/x")


def test_sync_interval_epochs_minutes_and_the_overhead_bound(mlflow_store, tmp_path):
    tracker = RunTracker.start("salt/sync", "fold0", {"salt.role": "fold"})
    clock, printed = Clock(), []
    hook = CheckpointSync(tracker, SyncConfig(mode="always", every_epochs=2, every_minutes=1.0, max_overhead=0.1),
                          label="sync", print_fn=printed.append, clock=clock)
    c = MlflowClient(mlflow_store)

    def epoch(n: int, at: float) -> str:
        clock.t = at
        state = _checkpoint(tmp_path / "work", n)
        hook.on_checkpoint(CheckpointSaved(n, tuple(travelling_files(tmp_path / "work", state))))
        return c.get_run(tracker.run_id).data.tags.get("salt.resume.checkpoint", "")

    assert epoch(1, 10.0) == ""  # 1 epoch, 10 s: neither interval passed
    assert epoch(2, 20.0) == "resume/e0002"  # 2 epochs
    assert sorted(a.path for a in c.list_artifacts(tracker.run_id, "resume/e0002")) == [
        "resume/e0002/cycle1_epoch1.oof.npy", "resume/e0002/cycle1_epoch1.pt", "resume/e0002/last.pt",
        "resume/e0002/precision.json"]
    assert epoch(3, 85.0) == "resume/e0003"  # 1 epoch but 65 s >= every_minutes
    assert [a.path for a in c.list_artifacts(tracker.run_id, "resume")] == ["resume/e0003"]  # the previous one went
    hook.last_upload_s = 30.0  # a slow link: 30 s per upload is more than 10% of anything under 300 s
    assert epoch(4, 150.0) == "resume/e0003" and epoch(5, 300.0) == "resume/e0003"
    assert sum("held back" in line for line in printed) == 1, printed
    assert epoch(6, 385.0) == "resume/e0006"  # 300 s since the last sync: 30 s is 10% of it
    steps = sorted(m.step for m in c.get_metric_history(tracker.run_id, "sync_seconds"))
    assert steps == [1, 2, 5]  # at the epoch index each sync followed
    assert c.get_run(tracker.run_id).data.tags["salt.resume.epoch"] == "6"

    hook.on_end(RunEnd(FoldStatus.FINISHED))  # a finished run is never resumed: its checkpoint and tags go
    tags = c.get_run(tracker.run_id).data.tags
    assert "salt.resume.checkpoint" not in tags and not c.list_artifacts(tracker.run_id, "resume")


def test_off_or_a_local_store_uploads_nothing(mlflow_store, tmp_path):
    tracker = RunTracker.start("salt/sync", "fold0", {"salt.role": "fold"})
    state = _checkpoint(tmp_path, 1)
    for cfg in (SyncConfig(mode="never"), SyncConfig()):  # auto over the SQLite store's file: artifacts
        hook = CheckpointSync(tracker, cfg, label="sync", print_fn=lambda s: None)
        hook.on_checkpoint(CheckpointSaved(1, tuple(travelling_files(tmp_path, state))))
    assert not MlflowClient(mlflow_store).list_artifacts(tracker.run_id)


def test_restore_brings_the_stores_checkpoint_unless_the_local_one_is_as_new(mlflow_store, tmp_path):
    tracker = RunTracker.start("salt/sync", "fold0", {"salt.role": "fold"})
    hook = CheckpointSync(tracker, SyncConfig(mode="always"), label="sync", print_fn=lambda s: None)
    a, b = tmp_path / "machine-a", tmp_path / "machine-b"
    state = _checkpoint(a, 2)
    hook.upload(CheckpointSaved(2, tuple(travelling_files(a, state))))

    assert restore(tracker, b) == "the store (resume/e0002, synced after epoch 2)"
    assert sorted(p.name for p in b.iterdir()) == ["cycle1_epoch1.oof.npy", "cycle1_epoch1.pt", "last.pt",
                                                    "precision.json"]
    assert (b / "last.pt").read_bytes() == (a / "last.pt").read_bytes()
    resumed, _ = load_state(b / "last.pt", **_parts())
    assert resumed.epochs_done == 2 and Path(resumed.best[1].weights) == b / "cycle1_epoch1.pt"

    _checkpoint(b, 3)  # this machine went further than the store's copy: kept
    assert restore(tracker, b) == "" and read_identity(b / "last.pt")[0] == 3
    (b / "last.pt").write_bytes(b"truncated")  # a corrupt local copy: the store's replaces it
    assert restore(tracker, b).startswith("the store") and read_identity(b / "last.pt")[0] == 2
    assert not [p for p in b.iterdir() if p.name.startswith(".restore")]  # the staging folder is gone


class StopAfter(HookBase):
    """Ctrl-C after the first epoch: the run ends KILLED with its last.pt, as a lost worker leaves it."""

    def on_epoch(self, event) -> None:
        raise KeyboardInterrupt


def test_a_fold_run_resumed_at_another_commit_says_so_on_the_run(synth_dir, mlflow_store, monkeypatch):
    from salt_exp.train import run as run_module
    from salt_exp.train.run import find_resumable, run_fold
    from tests.test_train_run import tiny_cfg

    cfg = tiny_cfg(synth_dir, "schedule.cycles=1", "train.threads=1")
    with pytest.raises(KeyboardInterrupt):
        run_fold(cfg, 0, study="sync", extra_hooks=[StopAfter()])
    run_id, _ = find_resumable(cfg, "sync", None, 0)
    monkeypatch.setattr(run_module, "git_commit", lambda: "0123abc-other")
    info = run_fold(cfg, 0, study="sync", resume=True)
    assert info.run_id == run_id
    tags = MlflowClient(mlflow_store).get_run(run_id).data.tags
    assert tags["salt.resumed_from"].startswith("after epoch 1 from ") and "work folder" in tags["salt.resumed_from"]
    assert "0123abc-other" in tags["salt.resume_warning"], tags
