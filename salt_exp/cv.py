"""``salt-exp cv``: cross-validate one config, without a search space (and without Optuna).

One parent run in ``salt/<study>`` (``salt.role=cv``, :class:`~salt_exp.contract.CVRunTags`: one per study
and config hash) with one nested fold run per fold (``salt.trial=none``, ``mlflow.parentRunId`` the cv
run). Parent metrics (step 0): ``fold<k>_map`` (the fold's best snapshot val_map), ``cv_map`` (their mean),
``cv_map_sd`` (their spread), ``oof_map`` and ``oof_map_bin_<bin>`` / ``oof_err_share_<bin>``: the best
snapshot of every fold, its stored ``oof.npz`` thresholded at 0.5, scored together; the same breakdown is
the table artifact ``oof_coverage_bins.json``. Tags: ``salt.status`` (a ``TrialState``), ``salt.cv_folds``,
``salt.duration_s``, ``salt.failure``.

Rerunning the same command continues the same parent run, each unfinished fold run from its checkpoint;
finished fold runs are reused as they are (nothing retrained, nothing registered twice), and metrics
whose value did not change are not logged again.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

import numpy as np

from salt_exp import contract as C
from salt_exp.config import ExperimentConfig, config_hash, dump_yaml, flatten
from salt_exp.contract import CVRunTags, FoldStatus, SnapshotVersion, Tag, TrialState
from salt_exp.errors import SaltError
from salt_exp.metrics import bin_breakdown, coverage_bins, image_scores
from salt_exp.stores import download_cache
from salt_exp.tracking import RunTracker, fetch_artifact, find_runs, run_summary, snapshot_versions
from salt_exp.train.run import FoldRunInfo, run_fold

DEFAULT_STUDY = "cv"  # the study of a cv whose config keeps the default name


class CVFoldFailed(SaltError):
    """A fold run of the cv ended FAILED; the message names the fold and the reason."""


@dataclass(frozen=True, kw_only=True)
class CVResult:
    run_id: str
    study: str
    fold_maps: dict[int, float]
    fold_runs: dict[int, str]
    cv_map: float
    cv_map_sd: float
    oof_map: float
    bins: list[dict] = field(default_factory=list)  # metrics.bin_breakdown rows of the joined OOF
    trained: list[int] = field(default_factory=list)  # folds trained or continued now (the rest had finished)


def default_study(cfg: ExperimentConfig) -> str:
    return cfg.name if cfg.name and cfg.name != C.ADHOC else DEFAULT_STUDY


def parse_folds(text: str | None, n_folds: int) -> list[int]:
    """``0-4``, ``0,2,3``, ``1`` or ``0-1,3`` as sorted unique folds; None: every fold of the config."""
    if text is None:
        return list(range(n_folds))
    folds: set[int] = set()
    try:
        for part in text.split(","):
            low, _, high = part.strip().partition("-")
            folds.update(range(int(low), int(high or low) + 1))
    except ValueError:
        raise SaltError(f"--folds: expected e.g. 0-4 or 0,2,3, got {text!r}") from None
    bad = sorted(f for f in folds if not 0 <= f < n_folds)
    if bad or not folds:
        raise SaltError(f"--folds {text}: folds must be in 0..{n_folds - 1} (data.n_folds is {n_folds})")
    return sorted(folds)


def run_cv(cfg: ExperimentConfig, *, folds: list[int] | None = None, study: str | None = None) -> CVResult:
    """Train (or continue, or reuse) every fold of ``cfg`` under one cv run and score them out of fold."""
    study = study or default_study(cfg)
    folds = parse_folds(None, cfg.data.n_folds) if folds is None else folds
    tracker = _parent_run(cfg, study, folds)
    with tracker.closing_parent():
        infos = {f: _fold(cfg, f, study=study, parent_id=tracker.run_id) for f in folds}
        result = _summarize(tracker, cfg, study, infos)
    return result


def _parent_run(cfg: ExperimentConfig, study: str, folds: list[int]) -> RunTracker:
    """The cv run of this study and config: the earlier one (continued), else a new one."""
    tags = CVRunTags(study=study, config_hash=config_hash(cfg))
    found = find_runs(C.experiment_name(study), tags.find_filter(), max_results=1)
    if found:
        tracker = RunTracker.resume(found[0].run_id)
    else:
        tracker = RunTracker.start(C.experiment_name(study), f"cv-{cfg.name}", tags.to_tags())
        tracker.log_params(flatten(cfg))
        tracker.log_text(dump_yaml(cfg), C.CONFIG_FILE)
    tracker.set_tags({Tag.STATUS: TrialState.RUNNING.value, Tag.CV_FOLDS: ",".join(map(str, folds))})
    return tracker


def _fold(cfg: ExperimentConfig, fold: int, *, study: str, parent_id: str) -> FoldRunInfo:
    info = run_fold(cfg, fold, study=study, parent_run_id=parent_id, resume=True)
    if info.result.status != FoldStatus.FINISHED:
        raise CVFoldFailed(f"fold {fold}: {info.result.reason}")
    if Tag.PARENT_RUN not in run_summary(info.run_id).tags:  # e.g. a `salt-exp train --study` run of this config
        RunTracker.attach(info.run_id).set_tags({Tag.PARENT_RUN: parent_id})
    return info


def best_snapshots(study: str, runs: dict[int, str]) -> dict[int, SnapshotVersion]:
    """Per fold, the registered cycle snapshot of its run with the best val_map (ties keep the earlier cycle); an
    SWA snapshot added later (``salt-exp swa``) is left out, so the cv's figures stay those of its training."""
    versions = [v for v in snapshot_versions(C.snapshot_model(study)) if not v.swa]
    best = {}
    for fold, run_id in runs.items():
        mine = [v for v in versions if v.run_id == run_id]
        if not mine:
            raise SaltError(f"fold {fold}: run {run_id} has no registered snapshot in {C.snapshot_model(study)}")
        best[fold] = C.best_snapshot(mine)
    return best


def oof_breakdown(cfg: ExperimentConfig, best: dict[int, SnapshotVersion]) -> tuple[float, list[dict]]:
    """(mAP, coverage-bin breakdown) of the snapshots' stored OOF probabilities at 0.5, all folds together."""
    from salt_exp.data.kaggle import load_kaggle

    tiles = load_kaggle(cfg.data.root).train
    scores, bins = [], []
    for _, snap in sorted(best.items()):
        ids, probs = C.read_snapshot_oof(fetch_artifact(snap.run_id, snap.oof, download_cache()))
        masks = tiles.masks[tiles.position(ids.astype(str))]
        scores.append(image_scores(probs > 0.5, masks))
        bins.append(coverage_bins(masks))
    joined = np.concatenate(scores)
    return float(joined.mean()), bin_breakdown(joined, np.concatenate(bins))


def _summarize(tracker: RunTracker, cfg: ExperimentConfig, study: str, infos: dict[int, FoldRunInfo]) -> CVResult:
    maps = {f: float(i.result.best_val_map) for f, i in infos.items()}
    runs = {f: i.run_id for f, i in infos.items()}
    oof_map, bins = oof_breakdown(cfg, best_snapshots(study, runs))
    cv_map, sd = statistics.fmean(maps.values()), statistics.pstdev(maps.values())
    metrics = {**{C.Metric.fold_map(f): m for f, m in maps.items()}, C.Metric.CV_MAP: cv_map,
               C.Metric.CV_MAP_SD: sd, C.Metric.OOF_MAP: oof_map}
    metrics.update({C.Metric.oof_map_bin(b["bin"]): b["mean_score"] for b in bins if b["count"]})
    metrics.update({C.Metric.oof_err_share(b["bin"]): b["err_share"] for b in bins})
    _log_changed(tracker, metrics)
    tracker.log_table({k: [b[k] for b in bins] for k in bins[0]}, C.CV_OOF_TABLE)
    trained = [f for f, i in infos.items() if not i.already_finished]
    return CVResult(run_id=tracker.run_id, study=study, fold_maps=maps, fold_runs=runs, cv_map=cv_map, cv_map_sd=sd,
                    oof_map=oof_map, bins=bins, trained=trained)


def _log_changed(tracker: RunTracker, metrics: dict[str, float]) -> None:
    """Log at step 0 the metrics the run lacks or holds with another value (a rerun adds no duplicate rows)."""
    held = run_summary(tracker.run_id).metrics
    fresh = {k: v for k, v in metrics.items() if k not in held or not math.isclose(held[k], v, abs_tol=1e-12)}
    if fresh:
        tracker.log_metrics(fresh, step=0)
