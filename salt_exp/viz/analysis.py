"""Error analysis of a set of predictions: pure functions over arrays (no plotting, no MLflow).

Groupings of the tiles, each an index per tile into a tuple of names:

- coverage bins (:func:`salt_exp.metrics.coverage_bins`);
- depth bands: equal-count bands of the tile depths, named by their depth range in feet;
- mask types, by the annotation logic the post-processing rules copy, first match wins:
  ``blank`` (the image is one grey value), ``empty`` (no salt), ``vertical`` (the bottom 30 rows equal the
  last row, neither empty nor full: the shape the ``vertical`` rule continues), ``cap`` (the last row is fully
  salt: the tiles below it are labelled empty) and ``other``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from salt_exp.data.kaggle import blank_images
from salt_exp.ensemble.postprocess import vertical_row
from salt_exp.metrics import BIN_NAMES, CURVE_GRID, coverage_bins, group_breakdown, image_scores, threshold_search

MASK_TYPES: tuple[str, ...] = ("blank", "empty", "vertical", "cap", "other")


def mask_types(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(N,) index into MASK_TYPES of each (image, truth mask) pair; images (N, H, W), masks (N, H, W) 0/1."""
    blank = blank_images(images)
    out = np.empty(len(masks), np.int64)
    for i, m in enumerate(np.asarray(masks) != 0):
        if blank[i]:
            out[i] = 0
        elif not m.any():
            out[i] = 1
        elif vertical_row(m) is not None:
            out[i] = 2
        elif m[-1].all():
            out[i] = 3
        else:
            out[i] = 4
    return out


def depth_bands(depths: np.ndarray, n_bands: int = 5) -> tuple[np.ndarray, tuple[str, ...]]:
    """(band index per tile, band names): ``n_bands`` bands of about equal count, edges at depth quantiles."""
    depths = np.asarray(depths, dtype=np.float64)
    edges = np.unique(np.quantile(depths, np.linspace(0, 1, n_bands + 1)))
    if len(edges) < 2:
        return np.zeros(len(depths), np.int64), (f"{edges[0]:.0f} ft",)
    band = np.clip(np.searchsorted(edges, depths, side="right") - 1, 0, len(edges) - 2)
    names = tuple(f"{edges[b]:.0f}-{edges[b + 1]:.0f} ft" for b in range(len(edges) - 1))
    return band, names


@dataclass(frozen=True, kw_only=True)
class Analysis:
    """Scores of final masks against the truth, with every grouping and the threshold curve."""

    ids: np.ndarray  # (N,)
    scores: np.ndarray  # (N,) competition score per tile
    coverage: list[dict]  # group_breakdown rows keyed "bin"
    depth: list[dict]  # keyed "band"
    types: list[dict]  # keyed "type"
    type_index: np.ndarray  # (N,) index into MASK_TYPES
    thresholds: np.ndarray | None  # (T,) when probabilities were given
    curve: np.ndarray | None  # (T,) mean score of probs > t (no post-processing)
    best_threshold: float | None
    used_threshold: float | None  # mean threshold the final masks were made with
    fold_curves: list[tuple[int, float, np.ndarray]]  # (fold, its threshold, its curve) when folds differ
    wrong_pixels: np.ndarray  # (N,) pixels where prediction and truth differ
    empty_fp: int  # empty truth, non-empty prediction
    nonempty_fn: int  # salt in the truth, empty prediction

    @property
    def score(self) -> float:
        return float(self.scores.mean())

    def worst(self, n: int) -> np.ndarray:
        """Positions of the ``n`` lowest-scoring tiles; ties: more wrong pixels first, then by id (stable)."""
        order = np.lexsort((self.ids, -self.wrong_pixels, self.scores))
        return order[:n]


def fold_curves(probs: np.ndarray, truth: np.ndarray, fold: np.ndarray, tile_threshold: np.ndarray
                ) -> list[tuple[int, float, np.ndarray]]:
    """Per fold: (fold, the threshold its tiles got, mean score of probs > t over CURVE_GRID)."""
    out = []
    for f in np.unique(fold):
        sel = fold == f
        _, _, curve = threshold_search(probs[sel], truth[sel], CURVE_GRID)
        out.append((int(f), float(tile_threshold[sel][0]), curve))
    return out


def analyse(ids: np.ndarray, pred: np.ndarray, truth: np.ndarray, *, images: np.ndarray, depths: np.ndarray,
            probs: np.ndarray | None = None, used_threshold: float | None = None, n_bands: int = 5,
            fold: np.ndarray | None = None, tile_threshold: np.ndarray | None = None) -> Analysis:
    """Score the final masks ``pred`` (N, 101, 101) against ``truth`` and group the scores.

    ``probs`` (N, 101, 101) adds the threshold curve of ``probs > t`` over CURVE_GRID; with ``fold``
    and ``tile_threshold`` (N,) also one curve per fold (ensembles threshold each fold on its own).
    """
    scores = image_scores(pred, truth)
    band, band_names = depth_bands(depths, n_bands)
    types = mask_types(images, truth)
    flat_p, flat_t = pred.reshape(len(pred), -1).any(axis=1), truth.reshape(len(truth), -1).any(axis=1)
    thresholds = curve = best = None
    per_fold: list[tuple[int, float, np.ndarray]] = []
    if probs is not None:
        best, _, curve = threshold_search(probs, truth, CURVE_GRID)
        thresholds = CURVE_GRID
        if fold is not None and tile_threshold is not None and len(np.unique(fold)) > 1:
            per_fold = fold_curves(probs, truth, fold, tile_threshold)
    return Analysis(
        ids=np.asarray(ids), scores=scores,
        coverage=group_breakdown(scores, coverage_bins(truth), BIN_NAMES, key="bin"),
        depth=group_breakdown(scores, band, band_names, key="band"),
        types=group_breakdown(scores, types, MASK_TYPES, key="type"), type_index=types,
        wrong_pixels=(pred.reshape(len(pred), -1) != truth.reshape(len(truth), -1)).sum(axis=1),
        thresholds=thresholds, curve=curve, best_threshold=best, used_threshold=used_threshold,
        fold_curves=per_fold,
        empty_fp=int((~flat_t & flat_p).sum()), nonempty_fn=int((flat_t & ~flat_p).sum()))
