"""``salt-exp cv CONFIG --full-fit``: after cross-validation, one run of the same recipe on every labelled tile.

The cross-validation chose the recipe; the full fit lets the final model see the labels its folds held
out (20% of them at k=5). Nothing is held out, so nothing can pick an epoch or a threshold: both come
from the cv run's fold runs.

- Steps: the same number of passes over the data as the fold runs. Every epoch has the fold runs'
  median training batches per epoch scaled by (all tiles / a fold's training tiles), capped at one full
  pass; the schedule is the fold runs' (a budgeted cv: its planned cycles and epochs per cycle, the
  median over folds; the budget itself is dropped, so the full fit takes about that much longer than one
  fold run). A budgeted fold run that stopped one epoch early is not cut short here.
- LR: the config's, or (``optim.lr: auto``) the median of the fold runs' LR-finder suggestions.
- Snapshot: the last epoch of each cycle (at the end of a cosine cycle the LR is at its minimum; the cv's
  best epochs show whether that is where the fold runs peaked: ``full_fit_cv_best_epoch_in_cycle``).
- Threshold: the mean of the fold runs' best-snapshot thresholds, written as the version's
  ``val_best_thr`` tag; ``val_map`` is NaN and ``oof`` empty (no out-of-fold predictions).

The run is a fold run with ``salt.fold=all`` nested under the cv run (``salt.full_fit_of``), registered
as versions of ``salt-<study>`` like fold snapshots, so ``salt-exp ensemble --full-fit include|only``
can use it. Rerunning continues (or reuses) it: its config is derived deterministically.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, replace

import numpy as np

from salt_exp import contract as C
from salt_exp.config import ExperimentConfig
from salt_exp.contract import FoldStatus, Tag
from salt_exp.cv import CVResult, best_snapshots
from salt_exp.errors import SaltError
from salt_exp.tracking import RunTracker, run_summary, snapshot_versions
from salt_exp.train.run import FoldRunInfo, run_fold
from salt_exp.train.setup import epoch_batches, load_fold

FULL_FIT_CYCLE_RANK = "full_fit_cycle_rank"  # param of a full fit: which of its cycles an ensemble takes first


@dataclass(frozen=True, kw_only=True)
class FoldFacts:
    """What the full fit needs of one finished fold run."""

    fold: int
    train_tiles: int
    epoch_batches: float  # training batches per epoch it ran (budgeted: done steps / done epochs)
    cycles: int
    cycle_epochs: int
    lr: float | None  # its LR-finder suggestion, None where it ran none
    threshold: float  # its best snapshot's threshold
    best_epoch_in_cycle: int  # 0-based epoch of its best snapshot within that cycle
    cycle_maps: dict[int, float]  # val_map of each registered cycle snapshot


@dataclass(frozen=True, kw_only=True)
class FullFitPlan:
    cv_run: str
    config: ExperimentConfig  # what the full fit trains
    threshold: float
    epoch_batches: int
    scale: float  # all tiles / a fold's training tiles (median)
    folds: tuple[int, ...]
    cv_epoch_batches: float
    cv_best_epoch_in_cycle: float  # median over folds; cycle_epochs - 1 means "the last epoch", the full fit's pick
    cycle_rank: tuple[int, ...]  # the full fit's cycles, best first by the cv fold runs' mean val_map per cycle

    def params(self) -> dict[str, object]:
        return {"full_fit_of": self.cv_run, FULL_FIT_CYCLE_RANK: ",".join(map(str, self.cycle_rank)),
                "full_fit_folds": ",".join(map(str, self.folds)), "full_fit_threshold": round(self.threshold, 4),
                "full_fit_epoch_batches": self.epoch_batches,
                "full_fit_scale": round(self.scale, 4), "full_fit_cv_epoch_batches": round(self.cv_epoch_batches, 2),
                "full_fit_cv_best_epoch_in_cycle": self.cv_best_epoch_in_cycle}


def _median_int(values: list[float]) -> int:
    return int(round(statistics.median(values)))


def fold_facts(cfg: ExperimentConfig, study: str, fold_runs: dict[int, str],
               tile_folds: np.ndarray) -> list[FoldFacts]:
    """The facts of each finished fold run, read back from MLflow; ``tile_folds``: every tile's persisted fold."""
    best = best_snapshots(study, fold_runs)
    versions = snapshot_versions(C.snapshot_model(study))
    facts = []
    for fold, run_id in sorted(fold_runs.items()):
        s = run_summary(run_id)
        n_train = int((tile_folds != fold).sum())
        budgeted = C.Metric.DONE_STEPS in s.metrics and C.Metric.PLANNED_CYCLES in s.params
        if budgeted:
            epochs = max(s.metrics.get(C.Metric.DONE_EPOCHS, 0.0), 1.0)
            batches = s.metrics[C.Metric.DONE_STEPS] / epochs
            cycles, cycle_epochs = int(s.params[C.Metric.PLANNED_CYCLES]), int(s.params[C.Metric.PLANNED_CYCLE_EPOCHS])
        else:
            batches = epoch_batches(cfg, n_train)
            cycles, cycle_epochs = cfg.schedule.cycles, cfg.schedule.cycle_epochs
        suggestion = s.metrics.get("lr_find_suggestion")
        snap = best[fold]
        facts.append(FoldFacts(fold=fold, train_tiles=n_train, epoch_batches=float(batches), cycles=cycles,
                               cycle_epochs=cycle_epochs, lr=suggestion, threshold=snap.val_best_thr,
                               best_epoch_in_cycle=max(snap.epoch, 0) % cycle_epochs,
                               cycle_maps={v.cycle: v.val_map for v in versions if v.run_id == run_id and not v.swa}))
    return facts


def cycle_rank(facts: list[FoldFacts], cycles: int) -> tuple[int, ...]:
    """Cycles ``0..cycles-1`` best first by the fold runs' mean snapshot val_map of that cycle (cycles no fold
    run reached last, later before earlier; ties keep the later cycle: it trained longer)."""
    def score(c: int) -> tuple[float, int]:
        maps = [f.cycle_maps[c] for f in facts if c in f.cycle_maps]
        return (statistics.fmean(maps) if maps else -1.0, c)
    return tuple(sorted(range(cycles), key=score, reverse=True))


def plan_full_fit(cfg: ExperimentConfig, facts: list[FoldFacts], *, all_tiles: int, cv_run: str) -> FullFitPlan:
    """The full fit's config and threshold from its cv fold runs' facts (pure: no MLflow, no data)."""
    if not facts:
        raise SaltError(f"cv run {cv_run}: no finished fold run to take the full fit's steps and threshold from")
    scale = all_tiles / statistics.median(f.train_tiles for f in facts)
    cv_batches = statistics.median(f.epoch_batches for f in facts)
    full_pass = epoch_batches(cfg, all_tiles, capped=False)
    batches = max(1, min(full_pass, math.ceil(cv_batches * scale - 1e-9)))
    cycles, cycle_epochs = _median_int([f.cycles for f in facts]), _median_int([f.cycle_epochs for f in facts])
    schedule = replace(cfg.schedule, budget_minutes=None, cycles=cycles, cycle_epochs=cycle_epochs,
                       warmup_epochs=min(cfg.schedule.warmup_epochs, cycle_epochs - 1))
    lr = cfg.optim.lr
    if lr == "auto":
        found = [f.lr for f in facts if f.lr is not None]
        if not found:
            raise SaltError(f"cv run {cv_run}: optim.lr is auto but no fold run logged an lr_find_suggestion")
        lr = float(statistics.median(found))
    full = replace(cfg, schedule=schedule, optim=replace(cfg.optim, lr=lr),
                   lr_find=replace(cfg.lr_find, enabled=False),
                   train=replace(cfg.train, max_train_batches=None if batches >= full_pass else batches))
    return FullFitPlan(cv_run=cv_run, config=full, threshold=statistics.fmean(f.threshold for f in facts),
                       cycle_rank=cycle_rank(facts, cycles),
                       epoch_batches=batches, scale=scale, folds=tuple(f.fold for f in facts),
                       cv_epoch_batches=cv_batches,
                       cv_best_epoch_in_cycle=float(statistics.median(f.best_epoch_in_cycle for f in facts)))


def run_full_fit(cfg: ExperimentConfig, cv: CVResult) -> tuple[FoldRunInfo, FullFitPlan]:
    """Train (or continue, or reuse) the full-data fit of ``cfg`` under its cv run."""
    tile_folds = load_fold(cfg, C.FULL_FIT).folds["fold"].to_numpy()  # one read of the data and its folds
    facts = fold_facts(cfg, cv.study, cv.fold_runs, tile_folds)
    plan = plan_full_fit(cfg, facts, all_tiles=len(tile_folds), cv_run=cv.run_id)
    info = run_fold(plan.config, C.FULL_FIT, study=cv.study, parent_run_id=cv.run_id, resume=True,
                    threshold=plan.threshold, extra_params=plan.params())
    if info.result.status != FoldStatus.FINISHED:
        raise SaltError(f"full fit of cv run {cv.run_id}: {info.result.reason}")
    RunTracker.attach(info.run_id).set_tags({Tag.FULL_FIT_OF: cv.run_id})
    RunTracker.attach(cv.run_id).set_tags({Tag.FULL_FIT_RUN: info.run_id})
    return info, plan
