"""Full-data fit (`salt-exp cv --full-fit`): its plan from the cv fold runs, the run, and its use in ensembles."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from salt_exp import contract as C
from salt_exp.cli import main
from salt_exp.errors import SaltError
from salt_exp.full_fit import FoldFacts, cycle_rank, plan_full_fit
from tests.test_train_run import CONFIGS, TINY, tiny_cfg

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _facts(fold: int, batches: float, *, lr: float | None = None, thr: float = 0.5, best: int = 2,
           maps: dict[int, float] | None = None, n_train: int = 80) -> FoldFacts:
    return FoldFacts(fold=fold, train_tiles=n_train, epoch_batches=batches, cycles=2, cycle_epochs=3, lr=lr,
                     threshold=thr, best_epoch_in_cycle=best, cycle_maps=maps or {})


def test_plan_scales_the_folds_epochs_to_all_tiles_and_takes_their_lr_and_threshold(synth_dir):
    cfg = tiny_cfg(synth_dir, "schedule.budget_minutes=5", "optim.lr=auto")  # batch 8, capped at 2 batches
    facts = [_facts(0, 5.0, lr=0.01, thr=0.4), _facts(1, 6.0, lr=0.03, thr=0.6), _facts(2, 7.0, lr=0.02, thr=0.5)]
    plan = plan_full_fit(cfg, facts, all_tiles=100, cv_run="cv1")
    assert plan.scale == pytest.approx(1.25) and plan.cv_epoch_batches == 6.0
    assert plan.epoch_batches == 8  # ceil(6 x 1.25 = 7.5): the same passes over 25% more tiles
    full = plan.config
    assert full.train.max_train_batches == 8 and full.schedule.budget_minutes is None
    assert (full.schedule.cycles, full.schedule.cycle_epochs) == (2, 3)  # the folds' plan, not the config's
    assert full.optim.lr == pytest.approx(0.02) and not full.lr_find.enabled  # median of the folds' suggestions
    assert plan.threshold == pytest.approx(0.5) and plan.folds == (0, 1, 2)
    assert plan.params()["full_fit_of"] == "cv1" and plan.params()["full_fit_epoch_batches"] == 8
    # more than one pass is never asked for: the cap goes and epochs are full passes over the 100 tiles
    assert plan_full_fit(cfg, [_facts(0, 20.0, lr=0.01)], all_tiles=100, cv_run="cv1").config.train.max_train_batches is None
    fixed = plan_full_fit(tiny_cfg(synth_dir, "optim.lr=0.05"), [_facts(0, 2.0)], all_tiles=100, cv_run="cv1")
    assert fixed.config.optim.lr == 0.05


def test_plan_refuses_what_it_cannot_derive(synth_dir):
    with pytest.raises(SaltError, match="no finished fold run"):
        plan_full_fit(tiny_cfg(synth_dir), [], all_tiles=100, cv_run="cv1")
    with pytest.raises(SaltError, match="lr_find_suggestion"):
        plan_full_fit(tiny_cfg(synth_dir, "optim.lr=auto"), [_facts(0, 2.0)], all_tiles=100, cv_run="cv1")


def test_epoch_batches_is_what_train_loader_makes(synth_dir):
    from salt_exp.train.setup import epoch_batches, load_fold, train_loader

    for extra in ([], ["train.max_train_batches=null"], ["optim.batch_size=4", "train.max_train_batches=null"],
                  ["optim.batch_size=1000", "train.max_train_batches=null"]):
        cfg = tiny_cfg(synth_dir, *extra)
        fd = load_fold(cfg, 0)
        assert epoch_batches(cfg, len(fd.train_idx)) == len(train_loader(cfg, fd, 0)), extra


def test_cycle_rank_follows_the_folds_mean_val_map_per_cycle():
    facts = [_facts(0, 1.0, maps={0: 0.5, 1: 0.7}), _facts(1, 1.0, maps={0: 0.6, 1: 0.65})]
    assert cycle_rank(facts, 2) == (1, 0)
    assert cycle_rank(facts, 3) == (1, 0, 2)  # a cycle no fold run reached ranks last
    assert cycle_rank([_facts(0, 1.0, maps={0: 0.5, 1: 0.5})], 2) == (1, 0)  # a tie: the later, longer-trained


FULL = [*TINY, "padding.mode=resize", "padding.size=64", "schedule.cycle_epochs=1"]


def _cv(root, *extra: str) -> list[str]:
    return ["cv", str(CONFIGS / "tiny.yaml"), "--folds", "0-1", "--study", "ff", "--set", f"data.root={root}",
            *[a for t in FULL for a in ("--set", t)], *extra]


@pytest.mark.slow
def test_full_fit_trains_on_every_tile_registers_fold_all_and_joins_the_ensemble(synth_dir, mlflow_store, tmp_path,
                                                                                 capsys):
    assert main(_cv(synth_dir, "--full-fit")) == 0
    assert "full fit run" in capsys.readouterr().out
    c = MlflowClient(mlflow_store)
    exp = c.get_experiment_by_name("salt/ff").experiment_id
    runs = c.search_runs([exp])
    (cv,) = [r for r in runs if r.data.tags["salt.role"] == "cv"]
    (full,) = [r for r in runs if r.data.tags.get("salt.fold") == "all"]
    folds = [r for r in runs if r.data.tags["salt.role"] == "fold" and r.data.tags["salt.fold"] != "all"]
    assert len(folds) == 2 and full.info.status == "FINISHED" and full.data.tags["salt.status"] == "FINISHED"
    assert full.data.tags["mlflow.parentRunId"] == cv.info.run_id == full.data.tags[C.Tag.FULL_FIT_OF]
    assert cv.data.tags[C.Tag.FULL_FIT_RUN] == full.info.run_id and full.info.run_name == "full-fit"
    # nothing validated: no val metric, one train_loss per epoch, every tile trained
    assert not any(k.startswith("val_") for k in full.data.metrics) and "best_val_map" not in full.data.metrics
    assert len(c.get_metric_history(full.info.run_id, "train_loss")) == 2  # 2 cycles x 1 epoch
    p = full.data.params
    from salt_exp.data.kaggle import load_kaggle
    from salt_exp.train.setup import load_fold

    cfg = tiny_cfg(synth_dir, *FULL)
    n_all, n_train = len(load_kaggle(synth_dir).train.ids), len(load_fold(cfg, 0).train_idx)
    assert float(p["full_fit_scale"]) == pytest.approx(n_all / n_train, abs=1e-3)
    assert int(p["full_fit_epoch_batches"]) == math.ceil(2 * n_all / n_train - 1e-9)  # the folds ran 2 batches
    assert p["fold"] == "all" and p["lr_find.enabled"] == "false" and p["full_fit_cycle_rank"]
    # registered like fold snapshots, tagged fold=all, with the folds' mean threshold and no OOF
    versions = c.search_model_versions("name='salt-ff'")
    mine = [v for v in versions if v.run_id == full.info.run_id]
    fold_best = {}
    for v in versions:  # the best snapshot of each fold run: highest val_map, ties keep the earlier cycle
        if v.tags["fold"] != "all":
            key = (float(v.tags["val_map"]), -int(v.tags["cycle"]))
            best = fold_best.get(v.run_id)
            if best is None or key > (float(best.tags["val_map"]), -int(best.tags["cycle"])):
                fold_best[v.run_id] = v
    assert len(mine) == 2 and all(v.tags["fold"] == "all" and v.tags["oof"] == "" for v in mine)
    assert all(math.isnan(float(v.tags["val_map"])) for v in mine)
    thr = np.mean([float(v.tags["val_best_thr"]) for v in fold_best.values()])
    assert all(float(v.tags["val_best_thr"]) == pytest.approx(thr) for v in mine), (
        [v.tags["val_best_thr"] for v in mine], {k: (v.tags["cycle"], v.tags["val_map"], v.tags["val_best_thr"])
                                                 for k, v in fold_best.items()})
    assert float(p["full_fit_threshold"]) == pytest.approx(thr, abs=1e-4)

    # the same command again: nothing trained, nothing registered twice
    assert main(_cv(synth_dir, "--full-fit")) == 0
    assert "(had finished)" in capsys.readouterr().out
    assert len(c.search_runs([exp])) == len(runs) and len(c.search_model_versions("name='salt-ff'")) == len(versions)

    # ensembles: the full fit beside the folds (default), left out, or alone; the OOF figures never include it
    subs = {}
    for mode in ("include", "exclude", "only"):
        subs[mode] = tmp_path / f"{mode}.csv"
        assert main(["ensemble", "--study", "ff", "--top-cycles", "1", "--postprocess", "none", "--full-fit", mode,
                     "--out", str(subs[mode])]) == 0
        ens = c.get_model_version_by_alias("salt-ff-ensemble", "champion")
        members = json.loads(ens.tags["members"])
        run = c.get_run(ens.run_id)
        full_keys = [m for m in members if m in {f"salt-ff/v{v.version}" for v in mine}]
        assert len(full_keys) == (0 if mode == "exclude" else 1), (mode, members)
        assert len(members) == 2 + len(full_keys)  # the fold members are chosen the same way in every mode
        assert run.data.params["full_fit"] == mode
        if mode == "only":
            assert run.data.metrics["test_threshold"] == pytest.approx(thr)
        subs[mode] = pd.read_csv(subs[mode], keep_default_na=False).sort_values("id")["rle_mask"].tolist()
    capsys.readouterr()
    assert subs["include"] != subs["exclude"] or subs["only"] != subs["exclude"]  # the full fit's weights were used
    assert main(["viz", "mosaic", "--run", full.info.run_id]) == 1
    assert "full-data fit" in capsys.readouterr().err


def test_only_full_fit_without_one_is_a_clear_error(synth_dir, mlflow_store, capsys):
    from salt_exp.train.run import run_fold

    assert run_fold(tiny_cfg(synth_dir, *FULL, "schedule.cycles=1"), 0, study="noff").result.status == "FINISHED"
    assert main(["ensemble", "--study", "noff", "--full-fit", "only", "--postprocess", "none"]) == 1
    assert "no full-data fit" in capsys.readouterr().err
