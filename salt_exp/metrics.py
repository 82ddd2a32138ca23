"""The TGS competition metric, coverage bins and threshold search, vectorised over images.

Per image (the whole mask is one object): empty truth scores 1 if the prediction is
empty else 0; otherwise the score is the fraction of thresholds t in 0.50, 0.55 ... 0.95
with IoU > t (strictly). Comparisons are integer-exact: IoU > k/20 <=> 20*I > k*U.
Higher is better. Score on the 101x101 crop, never on padded tiles.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

HIGHER_IS_BETTER = True
_KS = np.arange(10, 20, dtype=np.int64)  # thresholds t = k / 20 for k = 10..19

# Probability thresholds searched for a binary mask (validation, ensembles): 0.20, 0.21 ... 0.80.
THRESHOLD_GRID = np.round(np.arange(0.20, 0.801, 0.01), 2)
# The wider grid threshold curves are drawn over (error analysis): 0.05 ... 0.95.
CURVE_GRID = np.round(np.arange(0.05, 0.951, 0.01), 2)

# Coverage bins separate empty from almost empty: empty | (0,1%] | (1,10%] | (10,30%] | (30,60%] | (60,100%].
BIN_NAMES: tuple[str, ...] = ("empty", "0-1", "1-10", "10-30", "30-60", "60-100")
_BIN_UPPER_PERCENT = np.array([1, 10, 30, 60], dtype=np.int64)


def scores_from_counts(inter: np.ndarray, union: np.ndarray) -> np.ndarray:
    """Per-image scores from integer intersection and union counts (any matching shapes).

    Empty truth and empty prediction gives union 0 and score 1; empty truth with a
    non-empty prediction (or the reverse) gives intersection 0 and score 0.
    """
    inter = np.asarray(inter, dtype=np.int64)[..., None]
    union = np.asarray(union, dtype=np.int64)[..., None]
    hits = (20 * inter > _KS * union).sum(axis=-1)
    return np.where(union[..., 0] == 0, 1.0, hits / len(_KS))


def _as_bits(masks: np.ndarray) -> np.ndarray:
    """Bool/integer masks as they are (packbits treats nonzero as 1); anything else compared with 0."""
    masks = np.asarray(masks)
    return masks if masks.dtype.kind in "biu" else masks != 0


def intersection_union(pred: np.ndarray, truth: np.ndarray, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Integer intersection and union pixel counts, each (N,) int64, of masks (N, H, W) (nonzero = salt).

    Masks are bit-packed in chunks and counted with popcount: about 8x less memory traffic.
    """
    if np.shape(pred) != np.shape(truth):
        raise ValueError(f"prediction shape {np.shape(pred)} does not match truth shape {np.shape(truth)}")
    n = len(pred)
    inter, union = np.empty(n, np.int64), np.empty(n, np.int64)
    for s in range(0, n, chunk):
        p = np.packbits(_as_bits(pred[s:s + chunk]).reshape(min(chunk, n - s), -1), axis=1)
        t = np.packbits(_as_bits(truth[s:s + chunk]).reshape(p.shape[0], -1), axis=1)
        inter[s:s + chunk] = np.bitwise_count(p & t).sum(axis=1, dtype=np.int64)
        union[s:s + chunk] = np.bitwise_count(p | t).sum(axis=1, dtype=np.int64)
    return inter, union


def image_scores(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-image scores, (N,) float64, for binary masks pred and truth of shape (N, H, W)."""
    return scores_from_counts(*intersection_union(pred, truth))


def competition_score(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean per-image score: the leaderboard number."""
    return float(image_scores(pred, truth).mean())


def coverage_bins(masks: np.ndarray) -> np.ndarray:
    """Coverage-bin index (into BIN_NAMES) per mask, (N,) int64, integer-exact on pixel counts."""
    flat = np.asarray(masks).reshape(len(masks), -1)
    pixels = np.int64(flat.shape[1])
    salt = np.count_nonzero(flat, axis=1).astype(np.int64)
    # coverage <= p% <=> 100 * salt <= p * pixels; bin = 1 + number of upper edges strictly below.
    above = (100 * salt[:, None] > _BIN_UPPER_PERCENT[None, :] * pixels).sum(axis=1)
    return np.where(salt == 0, 0, 1 + above)


def bin_breakdown(scores: np.ndarray, bins: np.ndarray) -> list[dict[str, float | int | str]]:
    """Per coverage bin: count, mean score and the bin's share of the total error (sum of 1 - score)."""
    return group_breakdown(scores, bins, BIN_NAMES, key="bin")


def group_breakdown(scores: np.ndarray, groups: np.ndarray, names: Sequence[str],
                    key: str = "group") -> list[dict[str, float | int | str]]:
    """Per group (``groups`` holds indices into ``names``): count, mean score, share of the total error."""
    scores, groups = np.asarray(scores, dtype=np.float64), np.asarray(groups)
    total_err = float((1.0 - scores).sum())
    rows = []
    for g, name in enumerate(names):
        sel = groups == g
        err = float((1.0 - scores[sel]).sum())
        rows.append({
            key: name,
            "count": int(sel.sum()),
            "mean_score": float(scores[sel].mean()) if sel.any() else float("nan"),
            "err_share": err / total_err if total_err > 0 else 0.0,
        })
    return rows


def _lut_levels(thresholds: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Level of every possible uint8 (p/255) or float16 value, as an int32 lookup table."""
    if dtype == np.uint8:
        values = np.arange(256) / 255.0
    else:
        values = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float64)
    lut = np.searchsorted(thresholds, values, side="left").astype(np.int32)
    return np.where(np.isnan(values), 0, lut).astype(np.int32)


def _uniform_levels(probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Exact levels for an evenly spaced threshold grid: arithmetic guess, then a one-step fix."""
    t = len(thresholds)
    step = float(thresholds[-1] - thresholds[0]) / (t - 1)
    # Python floats keep float32 input in float32 (a 2x cheaper guess); the fix below makes it exact
    level = np.floor((probs - float(thresholds[0])) * (1.0 / step)).astype(np.int32) + 1
    np.clip(level, 0, t, out=level)
    edges = np.concatenate([[-np.inf], thresholds, [np.inf]])
    level -= probs <= edges[level]  # guessed one too high: thresholds[level-1] >= p
    level += probs > edges[level + 1]  # guessed one too low: thresholds[level] < p
    return level


def _level_index(probs: np.ndarray, thresholds: np.ndarray, lut: np.ndarray | None) -> np.ndarray:
    """Per pixel, how many thresholds lie strictly below its probability, int32.

    The pixel is predicted salt at threshold j (ascending) iff j < level, i.e. prob > thresholds[j].
    uint8 (p*255) and float16 probabilities go through a lookup table; float32/64 through
    arithmetic on an even grid, or a binary search otherwise.
    """
    if lut is not None:
        return lut[probs.view(np.uint16) if probs.dtype == np.float16 else probs]
    if len(thresholds) > 2 and np.allclose(np.diff(thresholds), thresholds[1] - thresholds[0], rtol=1e-9, atol=0):
        return _uniform_levels(probs, thresholds)
    return np.searchsorted(thresholds, probs, side="left").astype(np.int32)


def counts_by_threshold(
    probs: np.ndarray, truth: np.ndarray, thresholds: Sequence[float], chunk: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Intersection and union counts, each (T, N) int64, of ``probs > t`` against ``truth`` for every t.

    probs: (N, H, W) probabilities in [0, 1] (float16/32/64) or uint8 holding round(p*255);
    thresholds strictly ascending. One pass over the pixels: per image, one histogram of
    (threshold level, truth) pairs, then reverse cumulative sums over the levels.
    """
    thr = np.asarray(thresholds, dtype=np.float64)
    if len(thr) == 0 or np.any(np.diff(thr) <= 0):
        raise ValueError("thresholds must be non-empty and strictly ascending")
    probs = np.asarray(probs)
    lut = _lut_levels(thr, probs.dtype) if probs.dtype in (np.uint8, np.float16) else None
    n, t = len(probs), len(thr)
    inter, union = np.empty((t, n), np.int64), np.empty((t, n), np.int64)
    for s in range(0, n, chunk):
        p = probs[s:s + chunk].reshape(min(chunk, n - s), -1)
        m = len(p)
        key = _level_index(p, thr, lut)
        key += (t + 1) * np.arange(m, dtype=np.int32)[:, None]
        key *= 2
        key += np.asarray(truth[s:s + chunk]).reshape(p.shape) != 0
        hist = np.bincount(key.ravel(), minlength=2 * m * (t + 1)).reshape(m, t + 1, 2)
        # pixels with level > j are predicted at threshold j: reverse cumulative sums over levels.
        above = np.cumsum(hist[:, ::-1], axis=1)[:, ::-1][:, 1:]
        tp, fp = above[..., 1], above[..., 0]
        inter[:, s:s + m] = tp.T
        union[:, s:s + m] = (fp + hist[:, :, 1].sum(axis=1)[:, None]).T
    return inter, union


def threshold_search(
    probs: np.ndarray, truth: np.ndarray, thresholds: Sequence[float] | None = None
) -> tuple[float, float, np.ndarray]:
    """Best threshold for ``probs > t``: returns (best_threshold, best_score, mean score per threshold).

    Ties go to the threshold closest to 0.5 (the conservative choice), then the lower one.
    """
    thr = np.linspace(0.2, 0.8, 61) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    inter, union = counts_by_threshold(probs, truth, thr)
    curve = scores_from_counts(inter, union).mean(axis=1)
    best = np.flatnonzero(np.isclose(curve, curve.max(), rtol=0, atol=1e-12))
    pick = best[np.argmin(np.abs(thr[best] - 0.5))]
    return float(thr[pick]), float(curve[pick]), curve
