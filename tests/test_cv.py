"""`salt-exp cv` (a cv parent run with nested fold runs, resumable) and time-budgeted fold runs."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from salt_exp.cli import main
from salt_exp.config import config_hash
from salt_exp.cv import parse_folds
from salt_exp.errors import SaltError
from salt_exp.metrics import BIN_NAMES
from salt_exp.train import fold_run
from salt_exp.train.budget import plan_cycles, replan, should_stop
from salt_exp.train.hooks import EpochEnd, HookBase
from salt_exp.train.run import run_fold
from salt_exp.train.state import BudgetPlan
from tests.test_train_run import CONFIGS, FAST, TINY, tiny_cfg

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------- pure parts


def test_plan_cycles_fills_the_budget_with_shortened_epochs_and_keeps_the_cycles():
    # 10 full epochs (10 s each, 1 s of it validation) fit in the 97 s planned of the 100 s left: 3 cycles of
    # 4 epochs, each epoch shortened to what fits, instead of 3 x 3 full epochs leaving a quarter unused
    plan = plan_cycles(budget_s=110, used_s=10, step_s=1.0, steps_per_epoch=9, val_s=1.0, cycles=3)
    assert (plan.cycles, plan.cycle_epochs, plan.note) == (3, 4, "")
    assert plan.epoch_steps == 7 and 12 * (plan.epoch_steps + 1.0) <= 97
    plan = plan_cycles(budget_s=110, used_s=10, step_s=1.0, steps_per_epoch=9, val_s=1.0, cycles=10)
    assert (plan.cycles, plan.cycle_epochs, plan.epoch_steps) == (10, 1, 8)  # 10 epochs of 8 of the 9 batches
    plan = plan_cycles(budget_s=42.3, used_s=0, step_s=1.0, steps_per_epoch=9, val_s=1.0, cycles=2)
    assert (plan.cycle_epochs, plan.epoch_steps) == (2, 9)  # 4.1 epochs fit: 2 x 2 full ones, never longer


def test_plan_cycles_drops_cycles_when_quarter_epochs_do_not_fit():
    plan = plan_cycles(budget_s=100, used_s=10, step_s=1.0, steps_per_epoch=40, val_s=1.0, cycles=10)
    assert (plan.cycles, plan.cycle_epochs) == (7, 1) and "instead of 10" in plan.note  # 7 x 11 s of 87 s
    assert plan.epoch_steps == 11
    plan = plan_cycles(budget_s=100, used_s=99, step_s=1.0, steps_per_epoch=40, val_s=1.0, cycles=3)
    assert (plan.cycles, plan.cycle_epochs, plan.epoch_steps) == (1, 1, 10) and "not even one epoch" in plan.note


def test_replan_adds_whole_cycles_when_full_epochs_leave_room_for_them():
    # planned at 2 s/step (the first batches timed on a busy machine): 2 cycles x 2 full epochs of 10 batches;
    # the first epoch ran at 1 s/batch: 3 full epochs left take 33 s of the 77.6 s planned, room for 2 cycles more
    plan = BudgetPlan(budget_minutes=100 / 60, cycles=2, cycle_epochs=2, steps_per_epoch=10, step_s=2.0, val_s=1.0,
                      epoch_steps=10, used_s=20.0, epoch_wall_s=[11.0], epoch_batches=[10])
    replan(plan, 1)
    assert (plan.cycles, plan.cycle_epochs, plan.epoch_steps, plan.epochs) == (4, 2, 10, 8)
    assert "+2 cycle(s) after epoch 1" in plan.note and 7 * plan.epoch_s <= 0.97 * 80
    # measured as planned: the plan stays
    plan = BudgetPlan(budget_minutes=100 / 60, cycles=2, cycle_epochs=2, steps_per_epoch=10, step_s=2.0, val_s=1.0,
                      epoch_steps=10, used_s=20.0, epoch_wall_s=[21.0], epoch_batches=[10])
    replan(plan, 1)
    assert (plan.cycles, plan.epoch_steps, plan.note) == (2, 10, "")
    # shortened epochs are lengthened first; cycles come only once every epoch left is a full pass
    plan = BudgetPlan(budget_minutes=100 / 60, cycles=2, cycle_epochs=2, steps_per_epoch=10, step_s=2.0, val_s=1.0,
                      epoch_steps=5, used_s=20.0, epoch_wall_s=[6.0], epoch_batches=[5])
    replan(plan, 1)
    assert plan.cycles == 4 and plan.epoch_steps == 10


def test_should_stop_uses_measured_epochs_and_always_trains_the_first():
    plan = BudgetPlan(budget_minutes=10 / 60, cycles=2, cycle_epochs=5, steps_per_epoch=4, step_s=0.25, val_s=0.0, used_s=9.2)
    assert plan.epoch_s == 1.0 and not should_stop(plan, 1)  # ends at 10.2 s: within 3% of the 10 s budget
    plan.used_s = 9.5
    assert not should_stop(plan, 0) and should_stop(plan, 1)
    plan.epoch_steps = 2  # a planned epoch of 2 of the 4 batches
    assert plan.epoch_s == 0.5 and not should_stop(plan, 1)
    plan.epoch_steps = 0
    plan.used_s, plan.epoch_wall_s, plan.epoch_batches = 5.0, [1.0, 6.0], [4, 4]  # measured: 7 s / 8 batches
    assert plan.epoch_s == 3.5 and not should_stop(plan, 2)
    plan.stopped = True
    assert should_stop(plan, 2)


def test_parse_folds():
    assert parse_folds("0-4", 5) == [0, 1, 2, 3, 4] and parse_folds("3,1", 5) == [1, 3]
    assert parse_folds("0-1,3", 5) == [0, 1, 3] and parse_folds(None, 3) == [0, 1, 2]
    for bad in ("0-5", "a", "2-1"):
        with pytest.raises(SaltError, match="--folds"):
            parse_folds(bad, 5)


def test_unset_budget_leaves_the_config_hash_as_before(synth_dir):
    import hashlib
    import json

    from salt_exp.config.export import to_dict

    cfg = tiny_cfg(synth_dir)
    assert config_hash(cfg) != config_hash(tiny_cfg(synth_dir, "schedule.budget_minutes=5"))
    payload = to_dict(cfg)
    payload.pop("name")
    assert payload["schedule"].pop("budget_minutes") is None  # in the config, not in the hash of an unbudgeted one
    assert payload["loss"].pop("late_terms") is None and payload["loss"].pop("late_from_cycle") == 1  # nor these
    assert not payload.pop("pseudo")["labels"]  # nor the pseudo section without pseudo-labels
    assert payload.pop("sync")["mode"] == "auto"  # nor the sync section ever: where a checkpoint goes changes no result
    assert payload.pop("context")["mode"] == "none"  # nor the context section while it is off
    assert config_hash(cfg) == config_hash(tiny_cfg(synth_dir, "sync.mode=always", "sync.every_epochs=5"))
    assert config_hash(cfg) != config_hash(tiny_cfg(synth_dir, "loss.late_terms.lovasz=1.0"))
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    assert config_hash(cfg) == hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


# ---------------------------------------------------------------- salt-exp cv


def _cv_args(root: Path) -> list[str]:
    return ["cv", str(CONFIGS / "tiny.yaml"), "--folds", "0-1", "--study", "cvt", "--set", f"data.root={root}",
            *[a for t in TINY + FAST for a in ("--set", t)]]


def test_cv_runs_one_parent_with_nested_fold_runs_and_resumes_without_new_runs(synth_dir, mlflow_store, capsys):
    assert main(_cv_args(synth_dir)) == 0
    c = MlflowClient(mlflow_store)
    exp = c.get_experiment_by_name("salt/cvt").experiment_id
    runs = c.search_runs([exp])
    (parent,) = [r for r in runs if r.data.tags["salt.role"] == "cv"]
    folds = {int(r.data.tags["salt.fold"]): r for r in runs if r.data.tags["salt.role"] == "fold"}
    assert len(runs) == 3 and sorted(folds) == [0, 1] and parent.info.status == "FINISHED"
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id and r.info.status == "FINISHED"
               for r in folds.values())
    m = parent.data.metrics
    assert m["fold0_map"] == pytest.approx(folds[0].data.metrics["best_val_map"])
    assert m["cv_map"] == pytest.approx((m["fold0_map"] + m["fold1_map"]) / 2)
    assert m["cv_map_sd"] == pytest.approx(statistics.pstdev([m["fold0_map"], m["fold1_map"]]))
    assert {f"oof_err_share_{b}" for b in BIN_NAMES} <= set(m) and any(k.startswith("oof_map_bin_") for k in m)
    assert 0.0 <= m["oof_map"] <= 1.0
    tags = parent.data.tags
    assert tags["salt.status"] == "COMPLETE" and tags["salt.cv_folds"] == "0,1" and tags["salt.study"] == "cvt"
    assert tags["salt.config_hash"] == folds[0].data.tags["salt.config_hash"]
    assert {"oof_coverage_bins.json", "config.yaml"} <= {a.path for a in c.list_artifacts(parent.info.run_id)}
    versions = len(c.search_model_versions("name='salt-cvt'"))
    assert versions >= 2
    assert "cv_map" in capsys.readouterr().out

    assert main(_cv_args(synth_dir)) == 0  # the same command again: nothing new
    assert "none (all folds had finished)" in capsys.readouterr().out
    again = c.search_runs([exp])
    assert sorted(r.info.run_id for r in again) == sorted(r.info.run_id for r in runs)
    assert len(c.search_model_versions("name='salt-cvt'")) == versions
    assert len(c.get_metric_history(parent.info.run_id, "cv_map")) == 1
    assert c.get_run(parent.info.run_id).info.status == "FINISHED"


# ---------------------------------------------------------------- time budget


BUDGET = ["schedule.cycle_epochs=50", "schedule.budget_minutes=0.05"]  # unbudgeted: 2 x 50 epochs x 2 steps


def _budget_run(c: MlflowClient, run_id: str) -> tuple[dict, dict]:
    run = c.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["salt.status"] == "FINISHED"
    return run.data.metrics, run.data.params


def test_budgeted_run_stops_within_its_plan_and_logs_it(synth_dir, mlflow_store, tmp_path):
    cfg = tiny_cfg(synth_dir, *FAST, *BUDGET)
    unbudgeted_steps = cfg.schedule.cycles * cfg.schedule.cycle_epochs * cfg.train.max_train_batches
    info = run_fold(cfg, 0, study="budget")
    c = MlflowClient(mlflow_store)
    m, p = _budget_run(c, info.run_id)
    assert m["budget_minutes"] == pytest.approx(0.05) and p["budget_minutes"] == "0.05"
    assert 1 <= m["done_epochs"] <= m["planned_epochs"] and 0 < m["done_steps"] <= m["planned_steps"]
    assert m["done_steps"] < unbudgeted_steps and m["done_epochs"] <= m["done_steps"] <= m["done_epochs"] * 2
    assert int(p["planned_cycles"]) * int(p["planned_cycle_epochs"]) == m["planned_epochs"]
    assert m["budget_used_s"] > 0
    assert len(c.search_model_versions("name='salt-budget'")) >= 1 and info.versions
    assert len(c.get_metric_history(info.run_id, "val_map")) == m["done_epochs"]
    saved = torch.load(tmp_path / "work" / info.run_id / "last.pt", weights_only=False)["state"]["budget"]
    assert saved["cycles"] == int(p["planned_cycles"]) and saved["used_s"] > 0


def test_budgeted_epochs_report_their_share_of_the_budget(synth_dir, mlflow_store):
    info = run_fold(tiny_cfg(synth_dir, *FAST, *BUDGET), 0, study="share")
    c = MlflowClient(mlflow_store)
    shares = [m.value for m in sorted(c.get_metric_history(info.run_id, "budget_share"), key=lambda m: m.step)]
    m = c.get_run(info.run_id).data.metrics
    assert len(shares) == m["done_epochs"] and shares == sorted(shares) and 0 < shares[0]
    assert shares[-1] * 60 * m["budget_minutes"] <= m["budget_used_s"] + 1e-6  # spent at the last epoch's end


def test_late_loss_terms_replace_the_first_from_their_cycle(synth_dir, mlflow_store, monkeypatch):
    """BCE + Lovasz for cycle 0, Dice from cycle 1 on (2 cycles x 2 epochs); validation uses the epoch's loss."""
    seen = []
    real = fold_run.train_epoch

    def spy(model, adapter, loss_fn, *a, **k):
        seen.append(loss_fn.terms)
        return real(model, adapter, loss_fn, *a, **k)

    monkeypatch.setattr(fold_run, "train_epoch", spy)
    cfg = tiny_cfg(synth_dir, *FAST, "loss.late_terms={dice: 1.0}", "lr_find.enabled=false", "optim.lr=0.01")
    run_fold(cfg, 0, study="late")
    assert seen == [{"bce": 1.0, "lovasz": 0.5}] * 2 + [{"dice": 1.0}] * 2
    with pytest.raises(SaltError, match="loss.late_terms has unknown term 'lovaz'"):
        tiny_cfg(synth_dir, "loss.late_terms.lovaz=1.0")


class Interrupt(HookBase):
    def on_epoch(self, event: EpochEnd) -> None:
        raise KeyboardInterrupt


def test_budget_stop_mid_cycle_publishes_it_and_a_resumed_run_keeps_its_plan(synth_dir, mlflow_store, monkeypatch,
                                                                           tmp_path):
    """The first batches look very fast (a plan of many epochs), the measured epochs are not: the run stops
    mid-cycle, publishes that cycle's best epoch and ends FINISHED; killed before, a resume keeps the plan."""
    monkeypatch.setattr(fold_run, "probe_seconds", lambda *a, **k: (1e-3, 1e-4))
    # no LR finder: its measured step time would (rightly) correct the fake timing
    cfg = tiny_cfg(synth_dir, *FAST, *BUDGET, "lr_find.enabled=false", "optim.lr=0.01")
    with pytest.raises(KeyboardInterrupt):
        run_fold(cfg, 0, study="stop", extra_hooks=[Interrupt()])
    c = MlflowClient(mlflow_store)
    (killed,) = c.search_runs([c.get_experiment_by_name("salt/stop").experiment_id])
    assert killed.info.status == "KILLED"
    before = torch.load(tmp_path / "work" / killed.info.run_id / "last.pt", weights_only=False)["state"]["budget"]
    assert before["cycle_epochs"] > 1 and before["used_s"] > 0
    info = run_fold(cfg, 0, study="stop", resume=True)
    assert info.run_id == killed.info.run_id
    m, p = _budget_run(c, info.run_id)
    assert (int(p["planned_cycles"]), int(p["planned_cycle_epochs"])) == (before["cycles"], before["cycle_epochs"])
    assert m["done_steps"] < m["planned_steps"] and m["budget_used_s"] > before["used_s"]
    (version,) = c.search_model_versions("name='salt-stop'")
    assert version.tags["cycle"] == "0" and info.versions == {0: str(version.version)}


def test_interrupted_cv_continues_the_same_parent_and_the_unfinished_fold(synth_dir, mlflow_store, monkeypatch):
    import salt_exp.cv as cv

    real, calls = cv.run_fold, []

    def interrupt_fold1_once(cfg, fold, **kw):
        calls.append(fold)
        hooks = [Interrupt()] if fold == 1 and calls.count(1) == 1 else []
        return real(cfg, fold, **kw, extra_hooks=hooks)

    monkeypatch.setattr(cv, "run_fold", interrupt_fold1_once)
    cfg = tiny_cfg(synth_dir, *FAST)
    with pytest.raises(KeyboardInterrupt):
        cv.run_cv(cfg, folds=[0, 1], study="cvk")
    c = MlflowClient(mlflow_store)
    exp = c.get_experiment_by_name("salt/cvk").experiment_id
    (parent,) = c.search_runs([exp], "tags.`salt.role` = 'cv'")
    assert parent.info.status == "KILLED" and parent.data.tags["salt.status"] == "INTERRUPTED"
    (killed,) = c.search_runs([exp], "tags.`salt.fold` = '1'")
    assert killed.info.status == "KILLED"
    result = cv.run_cv(cfg, folds=[0, 1], study="cvk")
    assert result.run_id == parent.info.run_id and result.trained == [1] and result.fold_runs[1] == killed.info.run_id
    assert len(c.search_runs([exp])) == 3 and c.get_run(parent.info.run_id).info.status == "FINISHED"
    assert c.get_run(killed.info.run_id).data.tags["mlflow.parentRunId"] == parent.info.run_id


def test_replan_fits_the_epochs_left_to_the_measured_rate():
    # planned from a probe of 0.1 s/batch: 2 cycles x 2 epochs of 10 batches; the first epoch took 5 s
    # (0.4 s a batch once its 1 s of validation is taken off), 20 s of 30 are spent: the 3 epochs left
    # shrink to the batches that fit in 97% of the 10 s left
    plan = BudgetPlan(budget_minutes=0.5, cycles=2, cycle_epochs=2, steps_per_epoch=10, step_s=0.1, val_s=1.0,
                      used_s=20.0, epoch_steps=10)
    plan.epoch_wall_s, plan.epoch_batches = [5.0], [10]
    replan(plan, 1)
    assert plan.rate_s == pytest.approx(0.4) and plan.epoch_steps == 5  # (9.7 / 3 - 1) / 0.4 = 5.6
    assert plan.epochs == 4 and plan.planned_steps == 10 + 3 * 5
    plan.used_s, plan.epoch_wall_s = 2.0, [1.2]  # much faster than planned: epochs of a whole pass again
    replan(plan, 1)
    assert plan.epoch_steps == 10
