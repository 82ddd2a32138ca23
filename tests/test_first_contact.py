"""What a new user meets first: the command's version and exit codes, quiet logs, per-epoch lines, the cost of
a study before it starts, the UI's address."""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from salt_exp import __version__
from salt_exp.cli import QUIET_ENV, main
from salt_exp.study.cost import StudyCost
from salt_exp.train.hooks import EpochEnd, EpochLog, RunStart
from salt_exp.ui import ui_url

ROOT = Path(__file__).resolve().parents[1]


def test_version_module_entry_and_exit_codes(tmp_path, capsys):
    out = subprocess.run([sys.executable, "-m", "salt_exp", "--version"], capture_output=True, text=True, cwd=tmp_path,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == f"salt-exp {__version__}"
    assert main(["score", str(tmp_path / "missing.csv"), str(tmp_path / "also.csv")]) == 1  # a salt-exp error
    assert capsys.readouterr().err.startswith("error: ")
    with pytest.raises(SystemExit) as usage:  # argparse: a usage error
        main(["no-such-command"])
    assert usage.value.code == 2


def test_library_chatter_is_off_unless_verbose(monkeypatch, tmp_path):
    for key in QUIET_ENV:
        monkeypatch.setenv(key, "x")  # recorded, so the test leaves the environment as it found it
        monkeypatch.delenv(key)
    logging.getLogger("mlflow").setLevel(logging.INFO)
    main(["score", str(tmp_path / "a.csv"), str(tmp_path / "b.csv")])
    assert all(os.environ[k] == v for k, v in QUIET_ENV.items())
    assert logging.getLogger("mlflow").getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("alembic.runtime.migration").getEffectiveLevel() == logging.WARNING
    for key in QUIET_ENV:
        monkeypatch.delenv(key, raising=False)
    logging.getLogger("mlflow").setLevel(logging.INFO)
    main(["-v", "score", str(tmp_path / "a.csv"), str(tmp_path / "b.csv")])
    assert not any(k in os.environ for k in QUIET_ENV) and logging.getLogger("mlflow").level == logging.INFO


class _Choice:
    reason = "measured"

    @staticmethod
    def log_line() -> str:
        return "fp32 cl=off threads=2"


def test_epoch_lines_name_the_cycle_the_time_spent_and_the_eta():
    lines: list[str] = []
    log = EpochLog("s fold 0", print_fn=lines.append)
    log.on_start(RunStart(_Choice(), total_epochs=4, cycle_epochs=2))
    for epoch in range(3):
        log.on_epoch(EpochEnd(epoch, {"train_loss": 0.5, "val_loss": 0.4, "val_map": 0.6, "train_images_per_s": 20.0,
                                      "epoch_seconds": 60.0}))
    assert lines[0].startswith("[s fold 0] 4 epochs; fp32")
    assert "epoch 3/4 (cycle 2/2)" in lines[-1] and "elapsed 3.0 min" in lines[-1] and "ETA 1.0 min" in lines[-1]
    assert "val_map 0.6000" in lines[-1] and "20.0 img/s" in lines[-1]
    log.on_epoch(EpochEnd(3, {"train_loss": 0.5, "train_images_per_s": 20.0, "epoch_seconds": 60.0}))
    assert "(no validation)" in lines[-1] and "ETA 0.0 min" in lines[-1]  # a full-data fit validates nothing


def test_study_cost_counts_images_and_hours():
    cost = StudyCost(study="enc", trials=9, folds=5, epochs=500, train_images=2400, val_images=600, budget_minutes=None,
                     images_per_s=20.0, source="timed now, fp32")
    assert cost.images == 9 * 5 * 500 * 2400
    assert cost.hours == pytest.approx(9 * 5 * 500 * (2400 + 600 / 3) / 20.0 / 3600)
    assert "9 trial(s) left x 5 fold(s) x 500 epochs" in cost.line() and "days" in cost.line()
    budgeted = StudyCost(study="b", trials=9, folds=1, epochs=2, train_images=1, val_images=1, budget_minutes=8.0,
                         images_per_s=None, source="budgeted")
    assert budgeted.hours == pytest.approx(1.2) and "8 min budget" in budgeted.line()
    capped = StudyCost(study="t", trials=9, folds=5, epochs=500, train_images=2400, val_images=600, budget_minutes=None,
                       images_per_s=20.0, source="x", timeout_s=3600.0)
    assert capped.hours == 1.0 and "timeout" in capped.line()
    assert math.isnan(StudyCost(study="n", trials=1, folds=1, epochs=1, train_images=1, val_images=0,
                                budget_minutes=None, images_per_s=None, source="none").hours)
    done = StudyCost(study="d", trials=0, folds=2, epochs=6, train_images=48, val_images=15, budget_minutes=None,
                     images_per_s=None, source="none")  # a finished study resumed: nothing measured, nothing to say
    assert done.hours == 0.0 and "no trials left" in done.line()


def test_study_prints_its_cost_and_a_long_one_needs_yes(synth_dir, mlflow_store, tmp_path, capsys):
    spec = [str(ROOT / "studies" / "quickstart.yaml"), "--set", f"data.root={synth_dir}", "--storage", str(tmp_path / "q.journal")]
    assert main(["study", *spec, "--estimate"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("study quickstart: 3 trial(s) left x 2 fold(s)") and "img/s (timed now, fp32)" in line
    # the same study made ~10^6 x longer: refused without --yes when nobody can answer the question
    long = [*spec, "--set", "schedule.cycles=100", "--set", "schedule.cycle_epochs=100000"]
    assert main(["study", *long]) == 1
    assert "pass --yes" in capsys.readouterr().err


def test_ui_urls_open_the_training_layout(mlflow_store, capsys):
    assert ui_url("http://h:1", "7") == "http://h:1/#/experiments/7?workflowType=machine_learning"
    assert ui_url("http://h:1/", "7", "abc") == "http://h:1/#/experiments/7/runs/abc?workflowType=machine_learning"
    assert ui_url("http://h:1", None).endswith("/#/experiments?workflowType=machine_learning")
    assert main(["ui", "--study", "nothing", "--url-only"]) == 0
    assert "does not exist yet" in capsys.readouterr().out
    from salt_exp.tracking import experiment_id
    from salt_exp.tracking.store import client

    exp = experiment_id("salt/uitest")
    assert client().get_experiment(exp).tags["mlflow.experimentKind"] == "custom_model_development"
    assert main(["ui", "--study", "uitest", "--url-only", "--port", "5001"]) == 0
    assert f"http://127.0.0.1:5001/#/experiments/{exp}?workflowType=machine_learning" in capsys.readouterr().out


def test_quickstart_fold_runs_range_test_the_lr_and_train_at_the_searched_one(synth_dir, mlflow_store):
    from mlflow.tracking import MlflowClient

    from salt_exp.config import apply_overrides
    from salt_exp.study.spec import load_study_spec
    from salt_exp.train.run import run_fold

    spec = load_study_spec(ROOT / "studies" / "quickstart.yaml", (f"data.root={synth_dir}",))
    cfg = apply_overrides(spec.base_config(), ["optim.lr=0.02", "train.max_train_batches=2", "schedule.cycles=1",
                                               "schedule.cycle_epochs=2"])
    info = run_fold(cfg, 0, study="qlr")
    c = MlflowClient(mlflow_store)
    assert len(c.get_metric_history(info.run_id, "lr_find_loss")) >= 2  # the curve, in every quickstart fold run
    assert "lr_find.png" in {a.path for a in c.list_artifacts(info.run_id)}
    lr0 = next(m.value for m in c.get_metric_history(info.run_id, "lr") if m.step == 0)
    assert 0.01 < lr0 <= 0.02  # mid-cycle of a cosine from 0.02: the searched LR trains, not the range test's pick
    assert c.get_run(info.run_id).data.params["optim.lr"] == "0.02"  # the searched LR trains, not the suggestion


def test_a_bare_mlflow_in_the_project_folder_reads_the_project_store(tmp_path, monkeypatch):
    """MLflow 3's own default is sqlite:///mlflow.db: ./mlflow.db links to mlruns/mlflow.db."""
    from salt_exp.contract import Tag
    from salt_exp.tracking import RunTracker

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracker = RunTracker.start("salt/bare", "probe", {Tag.ROLE: "fold"})
    tracker.end("FINISHED")
    assert (tmp_path / "mlflow.db").is_symlink() and (tmp_path / "mlruns" / "mlflow.db").is_file()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    code = ("import mlflow; r = mlflow.search_runs(experiment_names=['salt/bare']); "
            "print(mlflow.get_tracking_uri(), list(r['run_id']))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    # MLflow's own default, as it resolves it: ./mlflow.db (the link)
    assert out.stdout.split()[0] in ("sqlite:///mlflow.db", f"sqlite:///{tmp_path / 'mlflow.db'}"), out.stdout
    assert tracker.run_id in out.stdout
