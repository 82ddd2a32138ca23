"""``salt-exp swa --study NAME``: which fold runs of a study get an SWA snapshot, and the loop over them.

``best`` (default): the fold runs of the study's best trial or cv run (the highest ``cv_map`` among its
COMPLETE trial and cv runs; in a study of bare ``salt-exp train --study`` runs, the fold runs of the (trial,
config) with the highest mean ``best_val_map``), the newest run per fold; ``all``: every fold run of the study.
Full-data fits are never candidates (nothing is held out to score an average on). A run that cannot have one
(not finished, fewer than two cycle snapshots) is skipped with the reason; a run that has one keeps it.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from salt_exp import contract as C
from salt_exp.contract import FoldStatus, Role, RunStatus, RunSummary, SnapshotVersion, Tag, TrialState
from salt_exp.ensemble.swa import MIN_MEMBERS, build_swa, choose_members, log_swa
from salt_exp.errors import SaltError
from salt_exp.stores import download_cache, tracking_uri
from salt_exp.tracking import find_runs, registry_versions

RUN_CHOICES = ("best", "all")


@dataclass(frozen=True, kw_only=True)
class SWAOutcome:
    """What ``salt-exp swa`` did for one fold run."""

    run_id: str
    fold: int
    version: SnapshotVersion | None = None  # the run's SWA version (made now or before); None: skipped
    cycles: tuple[int, ...] = ()  # the cycles it averages
    best_cycle: SnapshotVersion | None = None  # the run's best cycle snapshot, to compare with
    created: bool = False  # False with a version: an earlier `salt-exp swa` made it
    skipped: str = ""  # why the run has none


@dataclass(frozen=True, kw_only=True)
class SWAReport:
    study: str
    selection: str  # which fold runs, in words
    outcomes: list[SWAOutcome] = field(default_factory=list)


def check_options(runs: str, top: int | None, bn_batches: int | None) -> None:
    if runs not in RUN_CHOICES:
        raise SaltError(f"--runs {runs!r}: valid: {', '.join(RUN_CHOICES)}")
    if top is not None and top < MIN_MEMBERS:
        raise SaltError(f"--top {top}: SWA averages at least {MIN_MEMBERS} cycle snapshots")
    if bn_batches is not None and bn_batches < 1:
        raise SaltError(f"--bn-batches {bn_batches}: at least 1 batch recalibrates BatchNorm (default: a full pass)")


def swa_study(study: str, *, runs: str = "best", top: int | None = None, bn_batches: int | None = None,
              device: str = "auto", cache: Path | None = None) -> SWAReport:
    """An SWA snapshot for each selected fold run of ``study`` (``runs``: best | all), logged into the run and
    registered in ``salt-<study>``; runs that have one already are left as they are."""
    check_options(runs, top, bn_batches)
    selection, chosen = study_fold_runs(study, runs)
    by_run: dict[str, list[tuple[SnapshotVersion, dict[str, str]]]] = defaultdict(list)
    for rv in registry_versions(C.snapshot_model(study)):
        snap = SnapshotVersion.from_version(rv)
        if snap is not None:
            by_run[rv.run_id].append((snap, rv.tags))
    cache = cache or download_cache()
    outcomes = [swa_fold_run(r, by_run.get(r.run_id, []), top=top, bn_batches=bn_batches, device=device, cache=cache)
                for r in chosen]
    return SWAReport(study=study, selection=selection, outcomes=outcomes)


def swa_fold_run(run: RunSummary, versions: Sequence[tuple[SnapshotVersion, dict[str, str]]], *, top: int | None,
                 bn_batches: int | None, device: str, cache: Path) -> SWAOutcome:
    """The SWA snapshot of one fold run (``versions``: its registered snapshots with their tags): found, made, or
    the reason it has none."""
    fold = C.parse_fold(run.tags.get(Tag.FOLD, C.FULL_FIT_LABEL))
    status = run.tags.get(Tag.STATUS, "?")
    if run.status != RunStatus.FINISHED.value or status != FoldStatus.FINISHED.value:
        why = f"not finished (MLflow {run.status}, salt.status {status})"
        return SWAOutcome(run_id=run.run_id, fold=fold, skipped=why)
    cycles = [v for v, _ in versions if not v.swa]
    best = C.best_snapshot(cycles) if cycles else None
    done = next(((v, tags) for v, tags in versions if v.swa), None)
    if done is not None:
        averaged = tuple(int(c) for c in done[1].get(C.SWA_CYCLES_TAG, "").split(",") if c.strip())
        return SWAOutcome(run_id=run.run_id, fold=fold, version=done[0], cycles=averaged, best_cycle=best)
    try:
        members = choose_members(cycles, top)
    except SaltError as exc:
        return SWAOutcome(run_id=run.run_id, fold=fold, best_cycle=best, skipped=str(exc))
    swa = build_swa(members, data_root=run.data_root, bn_limit=bn_batches, device=device, cache=cache)
    return SWAOutcome(run_id=run.run_id, fold=fold, version=log_swa(swa), cycles=swa.cycles, best_cycle=best,
                      created=True)


# ---------------------------------------------------------------- which runs


def study_fold_runs(study: str, runs: str) -> tuple[str, list[RunSummary]]:
    """(what was chosen, in words; the fold runs) of ``study`` for ``runs`` (best | all), full-data fits left out."""
    exp = C.experiment_name(study)
    folds = [r for r in find_runs(exp, f"tags.`{Tag.ROLE}` = '{Role.FOLD.value}'")
             if r.tags.get(Tag.FOLD) != C.FULL_FIT_LABEL]
    if not folds:
        raise SaltError(f"study {study!r}: no fold runs in experiment {exp} of {tracking_uri()} (check --study and "
                        "MLFLOW_TRACKING_URI)")
    if runs == "all":
        return f"every fold run of study {study} ({len(folds)})", sorted(folds, key=_fold_order)
    parent = best_parent(study)
    if parent is not None:
        label = f"trial {parent.tags.get(Tag.TRIAL)}" if parent.role == Role.TRIAL.value else "cv run"
        chosen = [r for r in folds if r.tags.get(Tag.PARENT_RUN) == parent.run_id]
        text = f"{label} {parent.run_id} (cv_map {parent.metrics[C.Metric.CV_MAP]:.4f}), the best of study {study}"
    else:
        key, chosen = best_group(folds)
        text = f"trial {key[0]} config {key[1][:8]}, the best fold runs of study {study} by mean best_val_map"
    chosen = _newest_per_fold(chosen)
    if not chosen:
        raise SaltError(f"study {study!r}: its best trial or cv run has no fold runs left to average")
    return text, chosen


def best_parent(study: str) -> RunSummary | None:
    """The COMPLETE trial or cv run of ``study`` with the highest ``cv_map`` (ties: the earlier run)."""
    exp = C.experiment_name(study)
    parents = [r for role in (Role.TRIAL, Role.CV) for r in find_runs(exp, f"tags.`{Tag.ROLE}` = '{role.value}'")
               if r.tags.get(Tag.STATUS) == TrialState.COMPLETE.value and C.Metric.CV_MAP in r.metrics]
    return max(parents, key=lambda r: (r.metrics[C.Metric.CV_MAP], -r.start_ms), default=None)


def best_group(folds: Sequence[RunSummary]) -> tuple[tuple[str, str], list[RunSummary]]:
    """The finished fold runs of one (trial, config hash) with the highest mean ``best_val_map`` (newest per fold)."""
    groups: dict[tuple[str, str], list[RunSummary]] = defaultdict(list)
    for r in folds:
        if r.status == RunStatus.FINISHED.value and C.Metric.BEST_VAL_MAP in r.metrics:
            groups[(r.tags.get(Tag.TRIAL, C.NO_TRIAL), r.tags.get(Tag.CONFIG_HASH, ""))].append(r)
    if not groups:
        raise SaltError("no finished fold run with a best_val_map to choose the best trial by; try --runs all")

    def score(key: tuple[str, str]) -> float:
        return statistics.fmean(r.metrics[C.Metric.BEST_VAL_MAP] for r in _newest_per_fold(groups[key]))

    key = max(sorted(groups), key=score)
    return key, groups[key]


def _fold_order(r: RunSummary) -> tuple[int, int]:
    return C.parse_fold(r.tags.get(Tag.FOLD, C.FULL_FIT_LABEL)), r.start_ms


def _newest_per_fold(runs: Sequence[RunSummary]) -> list[RunSummary]:
    newest: dict[str, RunSummary] = {}
    for r in sorted(runs, key=lambda r: r.start_ms, reverse=True):
        newest.setdefault(r.tags.get(Tag.FOLD, ""), r)
    return sorted(newest.values(), key=_fold_order)
