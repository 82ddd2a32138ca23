"""End to end: a tiny fold run on the synthetic set against a real SQLite MLflow store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from salt_exp.config import load_config
from salt_exp.metrics import BIN_NAMES, image_scores
from salt_exp.train.run import run_fold
from tests.reliability import reliability

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = [
    "model.encoder=timm/resnet10t", "model.decoder_channels=[8,8,8,8,8]", "optim.batch_size=8",
    "train.max_train_batches=2", "lr_find.steps=6", "schedule.cycles=2", "schedule.cycle_epochs=2",
]


def tiny_cfg(root: Path, *extra: str):
    return load_config(CONFIGS / "tiny.yaml", [f"data.root={root}", *TINY, *extra])


def steps(c: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in c.get_metric_history(run_id, key))


def check_contract(c: MlflowClient, run_id: str, study: str) -> None:
    """What the README's MLflow contract promises for a finished 2-cycle x 2-epoch fold run."""
    run = c.get_run(run_id)
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["salt.role"] == "fold" and tags["salt.fold"] == "0" and tags["salt.study"] == study
    # MLflow's context tags (the UI's Source / User columns) and the git state as tools expect it
    import re

    assert re.fullmatch(r"[0-9a-f]{40}|unknown", tags["mlflow.source.git.commit"]), tags["mlflow.source.git.commit"]
    assert tags["mlflow.source.git.dirty"] in ("true", "false")
    assert tags["mlflow.user"] and tags["mlflow.source.name"] and tags["mlflow.source.type"] == "LOCAL"
    # the data as dataset inputs: the fold's training and validation tiles, told apart by context and digest
    inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    assert sorted(inputs) == ["train", "validation"], inputs
    assert inputs["train"].name.endswith("-fold0-train") and inputs["train"].digest != inputs["validation"].digest
    n_val = json.loads(inputs["validation"].profile)["tiles"]
    assert n_val > 0 and json.loads(inputs["train"].profile)["tiles"] > n_val
    assert run.data.params["model.encoder"] == "timm/resnet10t" and run.data.params["optim.momentum"] == "0.9"
    for key in ("train_loss", "val_loss", "val_map", "val_map_best_thr", "val_best_thr", "lr", "epoch_seconds",
                "train_images_per_s"):
        assert steps(c, run_id, key) == [0, 1, 2, 3], key
    n_find = len(steps(c, run_id, "lr_find_loss"))
    assert 2 <= n_find <= 6 and steps(c, run_id, "lr_find_lr") == list(range(n_find))
    assert "lr_find_suggestion" in run.data.metrics
    for b in BIN_NAMES:
        assert steps(c, run_id, f"val_err_share_{b}") == [0, 1]
    assert any(k.startswith("system/") for k in run.data.metrics)
    top = {a.path for a in c.list_artifacts(run_id)}
    assert {"config.yaml", "lr_find.png", "coverage_bins.json", "coverage_bins.png", "snapshots", "folds"} <= top
    versions = c.search_model_versions(f"name='salt-{study}'")
    assert sorted(int(v.tags["cycle"]) for v in versions) == [0, 1]
    for v in versions:
        assert v.run_id == run_id and {"study", "trial", "fold", "cycle", "epoch", "val_map", "encoder"} <= set(v.tags)
        files = {a.path for a in c.list_artifacts(run_id, f"snapshots/cycle_{v.tags['cycle']}")}
        assert {f"snapshots/cycle_{v.tags['cycle']}/{n}" for n in ("oof.npz", "coverage_bins.json")} <= files
        # the snapshot is a logged pyfunc model of its run: the version's source, its metrics linked to it
        assert v.source.startswith("models:/m-"), v.source
        lm = c.get_logged_model(v.source.removeprefix("models:/"))
        assert lm.source_run_id == run_id and lm.status.name == "READY" and lm.name == f"fold0-cycle{v.tags['cycle']}"
        linked = {m.key: m for m in lm.metrics}
        assert {"snapshot_val_map", "snapshot_epoch", "val_err_share_empty"} <= set(linked), sorted(linked)
        assert linked["snapshot_val_map"].value == pytest.approx(float(v.tags["val_map"]), abs=1e-6)
        assert linked["snapshot_val_map"].dataset_name.endswith("-fold0-validation")
        assert v.tags["weights"].startswith("artifacts/cycle") and v.tags["weights"].endswith(".pt")
    outputs = [(o.model_id, o.step) for o in run.outputs.model_outputs]
    assert sorted(step for _, step in outputs) == [0, 1] and {m for m, _ in outputs} == {v.source.removeprefix("models:/") for v in versions}


def test_fold_run_writes_the_mlflow_contract(synth_dir, mlflow_store, tmp_path):
    info = run_fold(tiny_cfg(synth_dir), 0, study="unit")
    assert info.result.status == "FINISHED" and sorted(info.versions) == [0, 1]
    c = MlflowClient(mlflow_store)
    check_contract(c, info.run_id, "unit")
    # the stored OOF probabilities are the validation tiles of fold 0, and score like the logged snapshot
    import mlflow

    v = c.get_model_version("salt-unit", info.versions[0])
    path = mlflow.artifacts.download_artifacts(run_id=info.run_id, artifact_path=v.tags["oof"], dst_path=str(tmp_path))
    oof = np.load(path)
    from salt_exp.data.folds import load_or_create_folds
    from salt_exp.data.kaggle import load_kaggle

    data = load_kaggle(synth_dir)
    folds = load_or_create_folds(data, "random", 5, 42)
    val_ids = folds["id"][folds["fold"] == 0].tolist()
    assert oof["ids"].tolist() == val_ids and oof["probs"].dtype == np.float16
    masks = data.train.masks[data.train.position(val_ids)]
    assert image_scores(oof["probs"] > 0.5, masks).mean() == pytest.approx(float(v.tags["val_map"]), abs=0.02)


FAST = ["padding.mode=resize", "padding.size=64"]  # 101 -> 64: ~4x cheaper, same code path


def test_nan_loss_ends_the_run_failed_with_reason(synth_dir, mlflow_store):
    info = run_fold(tiny_cfg(synth_dir, "optim.lr=1e30", "lr_find.enabled=false", *FAST), 0, study="nan")
    run = MlflowClient(mlflow_store).get_run(info.run_id)
    assert info.result.status == "FAILED" and run.info.status == "FAILED"
    assert "loss became" in run.data.tags["salt.failure"]


def _cli(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "salt_exp.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
@reliability("fault", "fold run", "SIGKILL mid-epoch (cycle 0's snapshot registered, cycle 1 training)",
             "`salt-exp train --resume` continues the same run (one run) to the contract of an uninterrupted run: "
             "every metric step once, each cycle's logged model and version once")
def test_sigkill_mid_epoch_then_resume(synth_dir, mlflow_store, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    args = ["train", str(CONFIGS / "tiny.yaml"), "--fold", "0", "--study", "kill", "--set", f"data.root={synth_dir}",
            *[a for t in TINY + FAST for a in ("--set", t)], "--set", "train.max_train_batches=3"]
    proc = _cli(args, env)
    work = tmp_path / "work"
    deadline = time.time() + 240
    # wait until the first cycle's snapshot is registered, then kill during the next epoch
    c = MlflowClient(mlflow_store)
    while time.time() < deadline and proc.poll() is None:
        try:
            if c.search_model_versions("name='salt-kill'"):
                break
        except Exception:  # noqa: BLE001 - the store may not exist yet
            pass
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.stdout.read()[-2000:]
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(work.glob("*/last.pt"))
    resumed = _cli([*args, "--resume"], env)
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out[-3000:]
    runs = c.search_runs([c.get_experiment_by_name("salt/kill").experiment_id])
    assert len(runs) == 1, "resume must continue the same run"
    check_contract(c, runs[0].info.run_id, "kill")


class Crash(Exception):
    """Stands for the process dying at one exact point of a contract write."""


@reliability("fault", "fold run", "crash (an exception) while a snapshot's weights upload, after its bin table",
             "the half-uploaded logged model is marked FAILED and never registered; the resumed run leaves one copy "
             "of every table row, metric step, logged model and version")
def test_crash_between_bins_table_and_snapshot_upload_then_resume(synth_dir, mlflow_store, monkeypatch):
    """Every write the contract owns is replay-safe: the snapshot's coverage-bin table is written, then the
    run dies while its weights upload to the logged model; the resumed run leaves one copy of every row,
    step, model and version."""

    real = MlflowClient.log_model_artifacts
    crashed = []

    def log_model_artifacts(self, model_id, local_dir, artifact_path=None):
        if not crashed:
            crashed.append(model_id)
            raise Crash(f"killed while uploading the weights of {model_id}")
        return real(self, model_id, local_dir, artifact_path)

    monkeypatch.setattr(MlflowClient, "log_model_artifacts", log_model_artifacts)
    cfg = tiny_cfg(synth_dir, *FAST)
    with pytest.raises(Crash):
        run_fold(cfg, 0, study="crash")
    c = MlflowClient(mlflow_store)
    (run,) = c.search_runs([c.get_experiment_by_name("salt/crash").experiment_id])
    assert run.info.status == "KILLED" and len(crashed) == 1
    assert any(a.path.endswith("coverage_bins.json") for a in c.list_artifacts(run.info.run_id, "snapshots/cycle_0"))
    assert c.get_logged_model(crashed[0]).status.name == "FAILED"  # the half-uploaded model is marked, not used
    assert not c.search_model_versions("name='salt-crash'")  # nothing registered from it
    info = run_fold(cfg, 0, study="crash", resume=True)
    assert info.run_id == run.info.run_id and info.result.status == "FINISHED"
    check_contract(c, info.run_id, "crash")
    assert f"models:/{crashed[0]}" not in {v.source for v in c.search_model_versions("name='salt-crash'")}
    import json

    import mlflow

    def table(path: str) -> dict:
        local = mlflow.artifacts.download_artifacts(run_id=info.run_id, artifact_path=path, tracking_uri=mlflow_store)
        return json.loads(Path(local).read_text())

    snap = table("snapshots/cycle_0/coverage_bins.json")
    assert [row[0] for row in snap["data"]] == list(BIN_NAMES), "a replay must not append rows"
    root = table("coverage_bins.json")
    assert [(row[0], row[2]) for row in root["data"]] == [(cy, b) for cy in (0, 1) for b in BIN_NAMES]
    logged = json.loads(c.get_run(info.run_id).data.tags["mlflow.loggedArtifacts"])
    assert sorted(e["path"] for e in logged) == ["coverage_bins.json", "snapshots/cycle_0/coverage_bins.json",
                                                 "snapshots/cycle_1/coverage_bins.json"]


def test_fold_run_precision_auto_is_measured_logged_and_kept_on_resume(synth_dir, mlflow_store, monkeypatch, capsys):
    """train.precision=auto times the real step at start-up; the choice goes to params, tags and every epoch
    line; a resumed run reuses the recorded choice instead of timing again."""
    from salt_exp.train import fold_run
    from salt_exp.train.cpu import detect_cpu

    cfg = tiny_cfg(synth_dir, *FAST, "train.precision=auto", "train.channels_last=auto")
    info = run_fold(cfg, 0, study="prec")
    c = MlflowClient(mlflow_store)
    run = c.get_run(info.run_id)
    tags, params = run.data.tags, run.data.params
    assert params["train.precision"] == "auto" and params["train.precision_used"] == tags["salt.precision"]
    assert tags["salt.precision_source"] in ("measured", "cached") and tags["salt.cpu"]
    if tags["salt.precision_source"] == "measured":
        assert "fp32" in tags["salt.precision_timings"] and "bf16" in tags["salt.precision_timings"]
    if not detect_cpu().bf16_supported:
        assert tags["salt.precision"] == "fp32"
    out = capsys.readouterr().out
    lines = [x for x in out.splitlines() if "epoch " in x and "val_map" in x and "img/s" in x]
    assert len(lines) == 4 and all(f"[{tags['salt.precision']} cl=" in x for x in lines), out[-2000:]
    # a resume must not time again: the run's work folder holds its choice
    work = Path(os.environ["SALT_EXP_WORK"]) / info.run_id
    assert (work / "precision.json").exists()

    def no_timing(*args, **kwargs):
        raise AssertionError("a resumed run timed its precision again")

    monkeypatch.setattr(fold_run, "choose_runtime", no_timing)
    c.set_terminated(info.run_id, "KILLED")  # pretend it died after its last epoch
    again = run_fold(cfg, 0, study="prec", resume=True)
    assert again.run_id == info.run_id and again.result.status == "FINISHED"
    assert c.get_run(info.run_id).data.tags["salt.precision"] == tags["salt.precision"]


def test_explicit_bf16_fold_run_trains_or_falls_back_with_a_reason(synth_dir, mlflow_store):
    from salt_exp.train.cpu import detect_cpu

    # threads pinned: with "auto" the thread count is timed whenever torch's current count (which an earlier
    # choice in this process may have lowered on a busy machine) differs from the cores, and the source is then
    # "measured" although the precision was the one requested
    info = run_fold(tiny_cfg(synth_dir, *FAST, "train.precision=bf16", "train.threads=1"), 0, study="bf16")
    run = MlflowClient(mlflow_store).get_run(info.run_id)
    assert info.result.status == "FINISHED" and np.isfinite(info.result.best_val_map)
    expected = "bf16" if detect_cpu().bf16_supported else "fp32"
    assert run.data.tags["salt.precision"] == expected and run.data.tags["salt.precision_source"] in (
        "requested", "unsupported")
    history = MlflowClient(mlflow_store).get_metric_history(info.run_id, "train_loss")
    assert all(np.isfinite(m.value) for m in history)
