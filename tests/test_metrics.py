from fractions import Fraction

import numpy as np
import pytest

from salt_exp.metrics import (
    BIN_NAMES,
    bin_breakdown,
    competition_score,
    counts_by_threshold,
    coverage_bins,
    image_scores,
    threshold_search,
)


def naive_score(pred: np.ndarray, truth: np.ndarray) -> float:
    """Independent per-image reference with exact rational IoU."""
    p, t = pred.astype(bool), truth.astype(bool)
    if not t.any():
        return 1.0 if not p.any() else 0.0
    if not p.any():
        return 0.0
    iou = Fraction(int((p & t).sum()), int((p | t).sum()))
    return sum(iou > Fraction(k, 20) for k in range(10, 20)) / 10


def random_masks(rng, n, size=12):
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        kind = i % 4
        if kind == 1:
            masks[i] = rng.random((size, size)) < 0.5
        elif kind >= 2:
            r, c = rng.integers(0, size, 2)
            masks[i, r:, c:] = 1
    return masks


def test_matches_naive_on_random_mixes():
    rng = np.random.default_rng(1)
    truth, pred = random_masks(rng, 400), random_masks(rng, 400)
    pred[::7] = truth[::7]  # some perfect
    expected = np.array([naive_score(p, t) for p, t in zip(pred, truth, strict=True)])
    assert np.allclose(image_scores(pred, truth), expected, atol=1e-12)


@pytest.mark.parametrize("k", range(10, 20))
def test_iou_exactly_on_threshold_does_not_count(k):
    # union 20 pixels, intersection k pixels -> IoU == k/20 exactly: threshold t=k/20 is NOT passed.
    truth = np.zeros((1, 5, 4), np.uint8)
    truth.reshape(-1)[:20] = 1
    pred = np.zeros_like(truth)
    pred.reshape(-1)[:k] = 1
    assert image_scores(pred, truth)[0] == pytest.approx((k - 10) / 10)
    assert image_scores(pred, truth)[0] == naive_score(pred[0], truth[0])


def test_empty_cases():
    empty, full = np.zeros((1, 4, 4)), np.ones((1, 4, 4))
    assert competition_score(empty, empty) == 1.0
    assert competition_score(full, empty) == 0.0
    assert competition_score(empty, full) == 0.0
    assert competition_score(full, full) == 1.0


def test_coverage_bins_edges_exact():
    masks = np.zeros((7, 10, 10), np.uint8)
    for i, pixels in enumerate([0, 1, 2, 10, 30, 60, 99]):
        masks[i].reshape(-1)[:pixels] = 1
    # 1% -> (0,1], 2% -> (1,10], 10% -> (1,10], 30% -> (10,30], 60% -> (30,60], 99% -> (60,100]
    assert coverage_bins(masks).tolist() == [0, 1, 2, 2, 3, 4, 5]


def test_bin_breakdown_shares_sum_to_one():
    scores = np.array([1.0, 0.0, 0.5, 0.2, 1.0, 0.9])
    bins = np.array([0, 0, 1, 3, 3, 5])
    rows = bin_breakdown(scores, bins)
    assert [r["bin"] for r in rows] == list(BIN_NAMES)
    assert sum(r["err_share"] for r in rows) == pytest.approx(1.0)
    assert rows[0]["count"] == 2 and rows[0]["mean_score"] == 0.5
    assert rows[0]["err_share"] == pytest.approx(1.0 / 2.4)
    assert np.isnan(rows[2]["mean_score"]) and rows[2]["err_share"] == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, np.uint8])
@pytest.mark.parametrize("grid", ["even", "uneven"])
def test_counts_by_threshold_equals_direct_thresholding(dtype, grid):
    rng = np.random.default_rng(3)
    truth = random_masks(rng, 60, size=16)
    probs = np.clip(truth * 0.5 + rng.random(truth.shape) * 0.6, 0, 1)
    thr = np.linspace(0.3, 0.7, 41) if grid == "even" else np.sort(rng.uniform(0.1, 0.9, 17))
    probs[:5, :3, :3] = thr[4]  # pixels exactly on a threshold are not predicted at it
    stored = (probs * 255).round().astype(np.uint8) if dtype == np.uint8 else probs.astype(dtype)
    values = stored / 255.0 if dtype == np.uint8 else stored.astype(np.float64)
    inter, union = counts_by_threshold(stored, truth, thr, chunk=7)
    for j, t in enumerate(thr):
        pred = values > t
        assert inter[j].tolist() == (pred & (truth > 0)).reshape(60, -1).sum(1).tolist()
        assert union[j].tolist() == (pred | (truth > 0)).reshape(60, -1).sum(1).tolist()


def test_threshold_search_finds_the_best_and_prefers_half_on_ties():
    rng = np.random.default_rng(5)
    truth = random_masks(rng, 80, size=16)
    probs = np.where(truth > 0, 0.62, 0.58) + rng.normal(0, 0.005, truth.shape)
    thr = np.linspace(0.3, 0.8, 51)
    best_t, best_s, curve = threshold_search(probs, truth, thr)
    brute = [competition_score(probs > t, truth) for t in thr]
    assert np.allclose(curve, brute)
    assert best_s == pytest.approx(max(brute)) and 0.58 < best_t < 0.62
    flat = np.zeros_like(probs)  # every threshold scores the same -> 0.5 is chosen
    assert threshold_search(flat, truth, thr)[0] == pytest.approx(0.5)
