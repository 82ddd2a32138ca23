"""The ensemble waterfall: chained gains, per-fold spread, comparison rows, the table round trip and the chart."""

from __future__ import annotations

import numpy as np
import pytest

from salt_exp.ensemble.waterfall import Waterfall, rows_from_table, save_waterfall_png, table_columns
from salt_exp.metrics import image_scores


def _masks(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.zeros((n, 101, 101), np.uint8)
    for i in range(n):
        out[i, : int(rng.integers(0, 101))] = 1
    return out


def test_gains_chain_and_spread_over_folds(tmp_path) -> None:
    truth, fold = _masks(12, 0), np.array([0] * 6 + [1] * 6)
    a, b = _masks(12, 1), truth.copy()
    b[:3] = _masks(3, 5)  # better than a on fold 0 but not perfect
    wf = Waterfall(truth, fold)
    s1 = wf.add("single", "single", a)
    wf.note("folds", "folds", "test only")
    s2 = wf.add("better", "+ better", b)
    assert s1.gain is None and s1.score == pytest.approx(image_scores(a, truth).mean())
    assert s2.gain == pytest.approx(s2.score - s1.score)
    for f in (0, 1):
        assert s2.gain_folds[f] == pytest.approx(image_scores(b[fold == f], truth[fold == f]).mean()
                                                 - image_scores(a[fold == f], truth[fold == f]).mean())
    assert s2.gain_sd == pytest.approx(np.std(list(s2.gain_folds.values()), ddof=1))
    assert wf.total_gain == pytest.approx(s2.score - s1.score)
    m = wf.metrics()
    assert m["wf_single"] == s1.score and m["wf_gain_better"] == s2.gain and "wf_folds" not in m
    # a comparison with another ensemble's per-fold scores, tile-weighted over the shared folds
    cmp = wf.compare("pseudo", "vs round 0", {0: 0.5, 2: 0.9})
    assert not cmp.chained and cmp.gain == pytest.approx(s2.folds[0] - 0.5) and set(cmp.folds) == {0}
    assert wf.total_gain == pytest.approx(s2.score - s1.score)  # comparisons stay outside the chain
    from salt_exp.contract import table_json

    rows = rows_from_table(table_json(table_columns(wf.rows())))  # as MLflow stores the table
    assert [r["step"] for r in rows] == ["single", "folds", "better", "pseudo"]
    assert rows[2]["gain_folds"] == {0: s2.gain_folds[0], 1: s2.gain_folds[1]} and rows[1]["score"] is None
    png = save_waterfall_png(rows, "test", tmp_path / "wf.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_greedy_selection_keeps_a_member_only_when_the_mean_scores_higher() -> None:
    """A strong snapshot and a much weaker one: their mean is worse than the strong one alone, so greedy keeps it
    alone; a second strong one that fixes other tiles joins."""
    from types import SimpleNamespace

    from salt_exp.ensemble.oof import greedy_members
    from salt_exp.ensemble.select import Member

    truth = _masks(8, 0)
    truth[0, :50] = 1  # salt where `good` is unsure
    ids = np.array([f"t{i}" for i in range(8)])
    train = SimpleNamespace(masks=truth, position=lambda x: np.array([int(str(i)[1:]) for i in x]))
    good = truth.astype(np.float32) * 0.4 + 0.3
    good[:2] = 0.45  # unsure about two tiles
    weak = np.full_like(good, 0.9)  # salt everywhere: with it, empty pixels cross the threshold
    helper = good.copy()
    helper[:2] = truth[:2] * 0.9 + 0.05  # sure where `good` is not
    probs = {"1": good, "2": weak, "3": helper}

    def member(v: str, val_map: float) -> Member:
        return Member(model="m", version=v, run_id="r", fold=0, cycle=int(v), val_map=val_map, weights="w", oof="o")

    source = lambda m: (ids, probs[m.version])  # noqa: E731
    chosen = greedy_members({0: [member("2", 0.4), member("1", 0.8)]}, source, train, 0.5)
    assert [m.version for m in chosen[0]] == ["1"]
    chosen = greedy_members({0: [member("2", 0.4), member("1", 0.8), member("3", 0.7)]}, source, train, 0.5)
    assert [m.version for m in chosen[0]] == ["1", "3"]
    # the waterfall shows what was not taken as a side row against the last chained step
    wf = Waterfall(truth, np.zeros(8, int))
    base = wf.add("single", "single", (good > 0.5).astype(np.uint8))
    side = wf.side("all_candidates", "all", (np.mean([good, weak], axis=0) > 0.5).astype(np.uint8))
    assert not side.chained and side.gain == pytest.approx(side.score - base.score) and side.gain < 0
    assert wf.total_gain == 0.0
