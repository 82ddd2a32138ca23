"""Out-of-fold evaluation of an ensemble from the probabilities each run stored, or (``oof_tta``) from its
members' predictions of their validation tiles with the h-flip TTA the test prediction uses.

A fold run scores its validation tiles without TTA (one view: cheaper per epoch); the test prediction
averages the flipped view in. Thresholds and rules chosen on plain OOF probabilities are then applied to
TTA probabilities; :class:`MemberOOF` gives both, so the ensemble can choose on what it deploys.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from salt_exp.contract import read_snapshot_oof
from salt_exp.data.context import ContextPool, TileContext
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


Source = Callable[[Member], tuple[np.ndarray, np.ndarray]]  # member -> (validation ids, probs)


class MemberOOF:
    """Every member's out-of-fold probabilities, each read or predicted once: ``plain`` what its run stored,
    ``tta`` its validation tiles predicted again with h-flip TTA (the test prediction's view)."""

    def __init__(self, train: TileSet, cache: Path, device: str = "auto", pool: ContextPool | None = None) -> None:
        self.train, self.cache, self.device = train, cache, device
        self.pool = pool  # the neighbour images a context member reads (its other folds' train tiles left out)
        self._plain: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._tta: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def plain(self, member: Member) -> tuple[np.ndarray, np.ndarray]:
        if member.key not in self._plain:
            ids, probs = load_member_oof(member, self.cache)
            self._plain[member.key] = ids, probs.astype(np.float32)
        return self._plain[member.key]

    def tta(self, member: Member) -> tuple[np.ndarray, np.ndarray]:
        if member.key not in self._tta:
            import time

            from salt_exp.ensemble.predict import member_predictor

            ids = self.plain(member)[0]
            pos = self.train.position(ids)
            t0 = time.perf_counter()
            context = None
            if self.pool is not None:
                others = self.train.ids[~np.isin(self.train.ids, ids)]  # across the fold split: treated as absent
                context = TileContext(self.pool, ids.astype(str).tolist(), frozenset(others.astype(str).tolist()))
            probs = member_predictor(member, self.cache, self.device).probs(self.train.images[pos], self.train.depths[pos],
                                                                            context=context)
            self._tta[member.key] = ids, probs.astype(np.float16).astype(np.float32)  # stored precision, as plain
            print(f"[ensemble] OOF with h-flip TTA: {member.key} (fold {member.fold}) predicted {len(ids)} validation "
                  f"tiles ({time.perf_counter() - t0:.0f} s)", flush=True)
        return self._tta[member.key]

    def source(self, tta: bool) -> Source:
        return self.tta if tta else self.plain


def pick_threshold(probs: np.ndarray, truth: np.ndarray, threshold: str | float) -> tuple[float, float]:
    if threshold == "search":
        thr, score, _ = threshold_search(probs, truth, THRESHOLD_GRID)
        return thr, score
    thr = float(threshold)
    return thr, float(image_scores(probs > thr, truth).mean())


def fold_oof(fold: int, members: Sequence[Member], train: TileSet, *, threshold: str | float, cache: Path,
             source: Source | None = None) -> FoldOOF:
    loaded = [(source or (lambda m: load_member_oof(m, cache)))(m) for m in members]
    ids = loaded[0][0]
    for m, (other, _) in zip(members, loaded, strict=True):
        if other.tolist() != ids.tolist():
            raise SaltError(f"{m.key}: its fold {fold} validation ids differ from {members[0].key}'s; "
                            "pipelines must share the same folds (data.folds_scheme, n_folds, folds_seed)")
    truth = train.masks[train.position(ids)]
    singles = [pick_threshold(p.astype(np.float32), truth, threshold)[1] for _, p in loaded]
    mean = np.mean([p.astype(np.float32) for _, p in loaded], axis=0)
    thr, score = pick_threshold(mean, truth, threshold)
    return FoldOOF(fold=fold, ids=ids, probs=mean, threshold=thr, score=score, best_single=max(singles))


def evaluate_oof(selection: Mapping[int, Sequence[Member]], train: TileSet, threshold: str | float,
                 cache: Path, source: Source | None = None) -> OOFResult:
    """Average members per fold, threshold per fold, score every OOF tile with the coverage breakdown;
    ``source`` gives each member's probabilities (default: what its run stored)."""
    folds = [fold_oof(f, ms, train, threshold=threshold, cache=cache, source=source) for f, ms in selection.items()]
    ids = np.concatenate([f.ids for f in folds])
    pred = np.concatenate([(f.probs > f.threshold).astype(np.uint8) for f in folds])
    truth = train.masks[train.position(ids)]
    scores = image_scores(pred, truth)
    sizes = np.array([len(f.ids) for f in folds])
    best_single = float(np.sum(sizes * np.array([f.best_single for f in folds])) / sizes.sum())
    return OOFResult(folds=folds, ids=ids, pred=pred, scores=scores, score=float(scores.mean()), best_single=best_single,
                     bins=bin_breakdown(scores, coverage_bins(truth)))


def greedy_members(selection: Mapping[int, Sequence[Member]], source: Source, train: TileSet,
                   threshold: str | float) -> dict[int, list[Member]]:
    """Per fold, forward selection: start from the best member (val_map, ties: the earlier version), then each
    further member in that order joins only when the mean with it scores higher on the fold's OOF tiles (at the
    threshold rule). An average with a much weaker snapshot (an early cycle of a short budget) is worse than the
    better one alone; this keeps such members out. The choice is made on the same tiles the OOF figures are
    measured on, so those figures are slightly optimistic (one comparison per candidate)."""
    out: dict[int, list[Member]] = {}
    for fold, ms in selection.items():
        ranked = sorted(ms, key=lambda m: (-m.val_map, int(m.version or 0)))
        ids = source(ranked[0])[0]
        truth = train.masks[train.position(ids)]
        chosen, probs = [ranked[0]], [source(ranked[0])[1]]
        best = pick_threshold(probs[0], truth, threshold)[1]
        for m in ranked[1:]:
            trial = [*probs, source(m)[1]]
            score = pick_threshold(np.mean(trial, axis=0), truth, threshold)[1]
            if score > best:
                chosen, probs, best = [*chosen, m], trial, score
        out[fold] = chosen
    return out
