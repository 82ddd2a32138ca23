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


def test_neighbour_tiles_are_read_but_never_returned() -> None:
    """A test tile's prediction above an OOF tile: with it as context the vertical rule reaches the OOF tile
    below; without it the column is broken at the unknown tile; the context tile itself is not returned."""
    from salt_exp.ensemble.postprocess import Neighbours

    index = MosaicIndex.from_frame(pd.DataFrame(grid([["src"], ["test"], ["oof"]]), columns=["id", "x", "y", "mosaic_id"]))
    ids, pred = ["src", "oof"], np.stack([cols(0, 40), EMPTY])
    alone = apply_rules(pred, ids, None, index, rules=["vertical"])
    np.testing.assert_array_equal(alone[1], EMPTY)  # "test" is unknown: nothing carries across it
    context = Neighbours(["test"], np.stack([EMPTY]))
    out = apply_rules(pred, ids, None, index, rules=["vertical"], context=context)
    assert out.shape == pred.shape  # only the caller's tiles come back
    np.testing.assert_array_equal(out[1], cols(0, 40))
    np.testing.assert_array_equal(out[0], cols(0, 40))
    # a caller's tile wins over a context tile of the same id (its own prediction, not the context's)
    same = apply_rules(pred, ids, None, index, rules=["vertical"],
                       context=Neighbours(["test", "oof"], np.stack([EMPTY, rows(0, N)])))
    np.testing.assert_array_equal(same[1], cols(0, 40))
    # a context tile's own vertical boundary is a source too (test tiles drive OOF tiles below them)
    src = apply_rules(np.stack([EMPTY]), ["oof"], None, index, rules=["vertical"],
                      context=Neighbours(["test"], np.stack([cols(10, 20)])))
    np.testing.assert_array_equal(src[0], cols(10, 20))
    with pytest.raises(SaltError, match="2 ids but 1 masks"):
        Neighbours(["a", "b"], np.stack([EMPTY]))


def test_measure_rules_scores_only_the_callers_tiles_with_context() -> None:
    from salt_exp.ensemble.postprocess import Neighbours

    index = MosaicIndex.from_frame(pd.DataFrame(grid([["test"], ["oof"]]), columns=["id", "x", "y", "mosaic_id"]))
    context = Neighbours(["test"], np.stack([cols(0, 30)]))
    rows_ = measure_rules(np.stack([EMPTY]), np.stack([cols(0, 30)]), ["oof"], None, index=index, rules=["vertical"],
                          context=context)
    assert rows_[0]["score_before"] == 0.0 and rows_[0]["score_after"] == 1.0 and rows_[0]["tiles_changed"] == 1


def test_broken_seams_cut_columns_and_sandwiches() -> None:
    index, ids, pred = setup([["a"], ["b"], ["c"]], {"a": cols(0, 40), "b": EMPTY, "c": EMPTY})
    out = apply_rules(pred, ids, None, index, rules=["vertical"], broken={("b", "c")})
    np.testing.assert_array_equal(out[1], cols(0, 40))  # a -> b still linked
    np.testing.assert_array_equal(out[2], EMPTY)  # the cut seam stops the carry
    out = apply_rules(pred, ids, None, index, rules=["vertical"], broken={("a", "b")})
    np.testing.assert_array_equal(out[1], EMPTY)
    np.testing.assert_array_equal(out[2], EMPTY)
    # a sandwich needs both of its links
    index, ids, pred = setup([["up"], ["mid"], ["down"]], {"up": cols(0, 50), "mid": EMPTY, "down": cols(0, 50)})
    np.testing.assert_array_equal(apply_rules(pred, ids, None, index, rules=["sandwich"])[1], cols(0, 50))
    cut = apply_rules(pred, ids, None, index, rules=["sandwich"], broken={("mid", "down")})
    np.testing.assert_array_equal(cut[1], EMPTY)


def test_oof_rules_see_what_a_test_tile_sees_and_never_a_folds_own_truth() -> None:
    """Per fold: labelled tiles outside the fold as truth, the fold's own tiles as predictions, test tiles as
    predictions; so a rule changes exactly the tiles whose column passes such a neighbour."""
    from types import SimpleNamespace

    from salt_exp.ensemble.build import OOFRules
    from salt_exp.ensemble.postprocess import Neighbours

    layout = [["T", "L", "X"], ["o1", "o2", "y"]]
    index = MosaicIndex.from_frame(pd.DataFrame(grid(layout), columns=["id", "x", "y", "mosaic_id"]))
    truth = {"L": cols(10, 20), "o1": cols(0, 40), "o2": cols(10, 20), "X": cols(30, 60), "y": cols(30, 60)}
    fold = {"L": 1, "o1": 0, "o2": 0, "X": 0, "y": 0}
    ids = ["o1", "o2", "X", "y", "L"]
    pred = np.stack([EMPTY, EMPTY, EMPTY, EMPTY, cols(10, 20)])
    images = np.stack([np.tile(np.arange(N, dtype=np.uint8), (N, 1))] * len(ids))
    train = SimpleNamespace(ids=np.array(ids), masks=np.stack([truth[i] for i in ids]), images=images)
    test = Neighbours(["T"], np.stack([cols(0, 40)]))
    rules = OOFRules.build(ids, images, np.array([fold[i] for i in ids]), index, train, test, ())
    out = dict(zip(ids, rules.apply(pred, ["vertical"]), strict=True))
    np.testing.assert_array_equal(out["o1"], cols(0, 40))  # from the test tile's prediction above it
    np.testing.assert_array_equal(out["o2"], cols(10, 20))  # from L's truth: L is outside fold 0
    np.testing.assert_array_equal(out["y"], EMPTY)  # X is fold 0 too: its prediction (empty), never its truth
    np.testing.assert_array_equal(out["L"], cols(10, 20))
    no_test = dict(zip(ids, rules.apply(pred, ["vertical"], test=False), strict=True))
    np.testing.assert_array_equal(no_test["o1"], EMPTY)  # without the test tile the column starts at o1
    np.testing.assert_array_equal(no_test["o2"], cols(10, 20))
    gains = {g["rule"]: g for g in rules.gains(pred, train.masks, ["vertical"])}
    assert gains["vertical"]["tiles_changed"] == 2 and gains["vertical"]["gain"] > 0
    cut = OOFRules.build(ids, images, np.array([fold[i] for i in ids]), index, train, test, {("T", "o1")})
    np.testing.assert_array_equal(cut.apply(pred, ["vertical"])[0], EMPTY)  # the seam check cut T -> o1
