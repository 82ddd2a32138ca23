"""Out-of-fold evaluation of an ensemble from the probabilities each run stored (never recomputed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from salt_exp.contract import read_snapshot_oof
from salt_exp.data.kaggle import TileSet
from salt_exp.ensemble.select import Member
from salt_exp.errors import SaltError
from salt_exp.metrics import THRESHOLD_GRID, bin_breakdown, coverage_bins, image_scores, threshold_search
from salt_exp.tracking import fetch_artifact


@dataclass(frozen=True, kw_only=True)
class FoldOOF:
    fold: int
    ids: np.ndarray  # (n,) validation ids of the fold
    probs: np.ndarray  # (n, 101, 101) float32: mean of the members' stored probabilities
    threshold: float
    score: float  # ensemble score of the fold at its threshold
    best_single: float  # best member's score at its own threshold rule


@dataclass(frozen=True, kw_only=True)
class OOFResult:
    folds: list[FoldOOF]
    ids: np.ndarray  # all OOF ids, fold by fold
    pred: np.ndarray  # (N, 101, 101) uint8 thresholded ensemble masks
    scores: np.ndarray  # (N,) per-image scores
    score: float
    best_single: float  # mean over folds of the best single snapshot's score (tile-weighted)
    bins: list[dict]


def load_member_oof(member: Member, cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """(ids, probs float16) stored by the member's run; downloaded once into ``cache``."""
    return read_snapshot_oof(fetch_artifact(member.run_id, member.oof, cache))


def _pick_threshold(probs: np.ndarray, truth: np.ndarray, threshold: str | float) -> tuple[float, float]:
    if threshold == "search":
        thr, score, _ = threshold_search(probs, truth, THRESHOLD_GRID)
        return thr, score
    thr = float(threshold)
    return thr, float(image_scores(probs > thr, truth).mean())


def fold_oof(fold: int, members: Sequence[Member], train: TileSet, *, threshold: str | float, cache: Path) -> FoldOOF:
    loaded = [load_member_oof(m, cache) for m in members]
    ids = loaded[0][0]
    for m, (other, _) in zip(members, loaded, strict=True):
        if other.tolist() != ids.tolist():
            raise SaltError(f"{m.key}: its fold {fold} validation ids differ from {members[0].key}'s; "
                            "pipelines must share the same folds (data.folds_scheme, n_folds, folds_seed)")
    truth = train.masks[train.position(ids)]
    singles = [_pick_threshold(p.astype(np.float32), truth, threshold)[1] for _, p in loaded]
    mean = np.mean([p.astype(np.float32) for _, p in loaded], axis=0)
    thr, score = _pick_threshold(mean, truth, threshold)
    return FoldOOF(fold=fold, ids=ids, probs=mean, threshold=thr, score=score, best_single=max(singles))


def evaluate_oof(selection: Mapping[int, Sequence[Member]], train: TileSet, threshold: str | float,
                 cache: Path) -> OOFResult:
    """Average members per fold, threshold per fold, score every OOF tile with the coverage breakdown."""
    folds = [fold_oof(f, ms, train, threshold=threshold, cache=cache) for f, ms in selection.items()]
    ids = np.concatenate([f.ids for f in folds])
    pred = np.concatenate([(f.probs > f.threshold).astype(np.uint8) for f in folds])
    truth = train.masks[train.position(ids)]
    scores = image_scores(pred, truth)
    sizes = np.array([len(f.ids) for f in folds])
    best_single = float(np.sum(sizes * np.array([f.best_single for f in folds])) / sizes.sum())
    return OOFResult(folds=folds, ids=ids, pred=pred, scores=scores, score=float(scores.mean()), best_single=best_single,
                     bins=bin_breakdown(scores, coverage_bins(truth)))
