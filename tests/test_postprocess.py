"""Mosaic post-processing rules: exact outputs on hand-built mosaics, the registry, measure_rules."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from salt_exp.ensemble.mosaic import MosaicIndex
from salt_exp.ensemble.postprocess import RULE_ORDER, apply_rules, get_rule, measure_rules
from salt_exp.errors import SaltError
from salt_exp.metrics import image_scores

N = 101


def cols(lo: int, hi: int) -> np.ndarray:
    """A mask with columns lo..hi-1 salt on every row (a vertical boundary)."""
    m = np.zeros((N, N), np.uint8)
    m[:, lo:hi] = 1
    return m


def rows(lo: int, hi: int, width: int = N) -> np.ndarray:
    m = np.zeros((N, N), np.uint8)
    m[lo:hi, :width] = 1
    return m


EMPTY = np.zeros((N, N), np.uint8)


def grid(layout: list[list[str]], mosaic: int = 0) -> list[tuple[str, int, int, int]]:
    """(id, x, y, mosaic_id) rows from a layout of ids by row ('' = no tile)."""
    return [(t, x, y, mosaic) for y, line in enumerate(layout) for x, t in enumerate(line) if t]


def setup(layout: list[list[str]], masks: dict[str, np.ndarray], loose: tuple[str, ...] = ()):
    """Index of the layout (loose tiles: in no mosaic), ids, (N, 101, 101) predictions."""
    index = MosaicIndex.from_frame(pd.DataFrame(grid(layout), columns=["id", "x", "y", "mosaic_id"]))
    ids = [t for line in layout for t in line if t] + list(loose)
    return index, ids, np.stack([masks[t] for t in ids])


def run(rule: str, layout, masks, loose=(), *, images=None) -> dict[str, np.ndarray]:
    index, ids, pred = setup(layout, masks, loose)
    out = apply_rules(pred, ids, images, index, rules=[rule])
    return dict(zip(ids, out, strict=True))


def test_vertical_extends_down_the_column_and_stops_at_gaps() -> None:
    diag = np.tril(np.ones((N, N), np.uint8))  # boundary not vertical: last 30 rows differ
    masks = {"a": cols(0, 40), "b": diag, "c": rows(0, N),  # c is full: not a source
             "d": EMPTY, "e": EMPTY, "f": cols(50, 60), "g": EMPTY, "h": rows(0, 50), "loose": cols(0, 40)}
    out = run("vertical", [["a", "b", "c"], ["d", "e", "f"], ["g", "", ""], ["h", "", ""]], masks, ("loose",))
    np.testing.assert_array_equal(out["d"], cols(0, 40))
    np.testing.assert_array_equal(out["g"], cols(0, 40))
    np.testing.assert_array_equal(out["h"], cols(0, 40))  # non-empty, different: overwritten (documented)
    for t in ("a", "b", "c", "e", "f", "loose"):
        np.testing.assert_array_equal(out[t], masks[t])


def test_vertical_needs_thirty_equal_rows_and_stops_at_a_gap() -> None:
    short = cols(0, 40)
    short[N - 30, 45] = 1  # row 71 differs: only 29 equal rows at the bottom
    ok = cols(0, 40)
    ok[N - 31, 45] = 1  # row 70 differs: exactly 30 equal rows
    out = run("vertical", [["a", "b", "c"], ["d", "e", ""], ["", "", "f"]],
              {"a": short, "b": ok, "c": cols(0, 40), "d": EMPTY, "e": EMPTY, "f": EMPTY})
    np.testing.assert_array_equal(out["d"], EMPTY)
    np.testing.assert_array_equal(out["e"], cols(0, 40))
    np.testing.assert_array_equal(out["f"], EMPTY)  # gap at (2, 1): no extension


def test_cap_empties_the_tiles_below_a_full_last_row() -> None:
    partial = rows(60, N, width=100)  # last row one pixel short of full
    masks = {"a": rows(60, N), "b": partial, "c": EMPTY, "d": cols(0, 30), "e": cols(0, 30), "f": cols(0, 30),
             "g": rows(0, 10), "loose": cols(0, 5)}
    out = run("cap", [["a", "b", "c"], ["d", "e", "f"], ["g", "", ""]], masks, ("loose",))
    np.testing.assert_array_equal(out["d"], EMPTY)
    np.testing.assert_array_equal(out["g"], EMPTY)
    for t in ("a", "b", "c", "e", "f", "loose"):
        np.testing.assert_array_equal(out[t], masks[t])


def test_sandwich_fills_with_the_row_above_when_it_grows_the_mask() -> None:
    small = np.zeros((N, N), np.uint8)
    small[40:50, 40:50] = 1
    big = rows(0, 60)  # 6060 pixels > 10 * 101
    masks = {"a": cols(0, 50), "b": cols(0, 10), "c": cols(0, 10),
             "d": small, "e": big, "f": small,
             "g": rows(0, 5), "h": rows(0, 5), "i": EMPTY}  # f: no salt below
    out = run("sandwich", [["a", "b", "c"], ["d", "e", "f"], ["g", "h", "i"]], masks)
    np.testing.assert_array_equal(out["d"], cols(0, 50))
    for t in "abcefghi":
        np.testing.assert_array_equal(out[t], masks[t])


def test_blank_empties_constant_tiles_without_needing_neighbours() -> None:
    index, ids, pred = setup([["a", "b"]], {"a": cols(0, 9), "b": cols(0, 9), "loose": cols(0, 9)}, ("loose",))
    images = np.random.default_rng(0).integers(0, 255, (3, N, N), dtype=np.uint8)
    images[2] = 40
    out = apply_rules(pred, ids, images, index, rules=["blank"])
    np.testing.assert_array_equal(out, np.stack([cols(0, 9), cols(0, 9), EMPTY]))
    with pytest.raises(SaltError, match="images"):
        apply_rules(pred, ids, None, index, rules=["blank"])


def test_registry_and_order_and_dict_input() -> None:
    with pytest.raises(SaltError, match="valid rules: blank, vertical, sandwich, cap"):
        get_rule("nope")
    # b is a vertical source for c, but a is a cap: cap runs last whatever the order of the names.
    index, ids, pred = setup([["a"], ["b"], ["c"]], {"a": rows(50, N), "b": cols(0, 40), "c": EMPTY})
    one = apply_rules(pred, ids, None, index, rules=["cap", "vertical"])
    two = apply_rules(pred, ids, None, index, rules=["vertical", "cap"])
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(one, np.stack([rows(50, N), EMPTY, EMPTY]))
    as_dict = apply_rules({t: m for t, m in zip(ids, pred, strict=True)} | {"x": cols(0, 1)}, ids, None, index, rules=["cap"])
    assert set(as_dict) == {"a", "b", "c", "x"} and not as_dict["b"].any() and as_dict["x"].any()


def test_measure_rules_gains_match_direct_scores() -> None:
    layout = [["a", "b"], ["c", "d"], ["e", "f"]]
    pred_masks = {"a": cols(0, 40), "b": rows(50, N), "c": EMPTY, "d": cols(0, 20), "e": EMPTY, "f": EMPTY}
    truth_masks = {"a": cols(0, 40), "b": rows(50, N), "c": cols(0, 40), "d": EMPTY, "e": EMPTY, "f": EMPTY}
    index, ids, pred = setup(layout, pred_masks)
    truth = np.stack([truth_masks[t] for t in ids])
    images = np.ones((len(ids), N, N), np.uint8)
    images[:, 0, 0] = 0
    report = measure_rules(pred, truth, ids, images, index=index, rules=RULE_ORDER)
    assert [r["rule"] for r in report] == [*RULE_ORDER, "+".join(RULE_ORDER)]
    before = image_scores(pred, truth).mean()
    for r in report:
        after = apply_rules(pred, ids, images, index, rules=r["rule"].split("+"))
        assert r["score_before"] == pytest.approx(before)
        assert r["gain"] == pytest.approx(image_scores(after, truth).mean() - before)
        assert r["tiles_changed"] == int((after != pred).any(axis=(1, 2)).sum())
    gains = {r["rule"]: (r["gain"], r["tiles_changed"]) for r in report}
    # vertical: c fixed (+1); e (from a) and f (from d) filled with wrong lines (-1 each): a rule that hurts
    assert gains["vertical"] == (pytest.approx(-1 / 6), 3)
    assert gains["cap"] == (pytest.approx(1 / 6), 1)  # d emptied
