"""Jigsaw solver: exact on a hand-cut field, >= 95% pair precision on synthetic and real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.ndimage import gaussian_filter

from salt_exp.data.kaggle import load_kaggle
from salt_exp.ensemble.jigsaw import neighbour_pairs, pair_precision, solve_jigsaw
from salt_exp.synth import SynthConfig, generate_dataset

from .conftest import REAL_TGS


def cut_field(rows: int, cols: int, seed: int = 0) -> tuple[list[str], np.ndarray, pd.DataFrame]:
    """A smooth random field cut into tiles, each contrast-stretched on its own, shuffled; with its truth."""
    rng = np.random.default_rng(seed)
    field = gaussian_filter(rng.normal(size=(rows * 101, cols * 101)), sigma=(2, 6))
    tiles, truth = [], []
    for y in range(rows):
        for x in range(cols):
            t = field[y * 101:(y + 1) * 101, x * 101:(x + 1) * 101]
            tiles.append(np.round(255 * (t - t.min()) / (t.max() - t.min())).astype(np.uint8))
            truth.append((f"t{y}{x}", x, y, 0))
    order = rng.permutation(len(tiles))
    ids = [truth[k][0] for k in order]
    return ids, np.stack([tiles[k] for k in order]), pd.DataFrame(truth, columns=["id", "x", "y", "mosaic_id"])


def test_hand_cut_field_is_reassembled_exactly() -> None:
    ids, images, truth = cut_field(3, 4)
    images = np.concatenate([images, np.full((1, 101, 101), 7, np.uint8)])  # a blank tile never matches
    pred = solve_jigsaw([*ids, "blank"], images)
    assert pair_precision(pred, truth) == {"precision": 1.0, "recall": 1.0, "n_pairs": 17, "n_true": 17,
                                           "n_correct": 17, "n_unjudged": 0}
    assert sorted(pred["id"]) == sorted(ids) and set(pred["mosaic_id"]) == {0}
    assert pred[["x", "y"]].min().tolist() == [0, 0]


def test_too_few_tiles_give_an_empty_table() -> None:
    for n in (0, 2):
        pred = solve_jigsaw([str(i) for i in range(n)], np.zeros((n, 101, 101), np.uint8))
        assert pred.empty and list(pred.columns) == ["id", "x", "y", "mosaic_id"]


def test_pair_precision_counts() -> None:
    truth = pd.DataFrame({"id": list("abcd"), "x": [0, 1, 0, 1], "y": [0, 0, 1, 1], "mosaic_id": 0})
    pred = pd.DataFrame({"id": list("abxc"), "x": [0, 1, 2, 0], "y": [0, 0, 0, 1], "mosaic_id": 0})
    assert neighbour_pairs(truth) == {("a", "b", "right"), ("c", "d", "right"), ("a", "c", "below"),
                                      ("b", "d", "below")}
    got = pair_precision(pred, truth, ids=list("abc"))
    # predicted: a-b right, b-x right (x unknown: unjudged), a-c below -> 2 of 2 judged correct;
    # true pairs among a, b, c: a-b right, a-c below -> recall 1
    assert got == {"precision": 1.0, "recall": 1.0, "n_pairs": 3, "n_true": 2, "n_correct": 2, "n_unjudged": 1}


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("jigsaw") / "synthetic"
    generate_dataset(out, SynthConfig(sections=4, seed=3))
    return out


def test_synthetic_pairs_are_recovered(synth: Path) -> None:
    data = load_kaggle(synth, cache=False)
    ids = [*data.train.ids, *data.test.ids]
    pred = solve_jigsaw(ids, np.concatenate([data.train.images, data.test.images]))
    got = pair_precision(pred, data.mosaics, ids)
    assert got["precision"] >= 0.95 and got["recall"] >= 0.85, got


@pytest.mark.skipif(not (REAL_TGS / "mosaics.csv").exists(), reason="real TGS data not available")
def test_real_train_tiles_match_the_public_reconstruction() -> None:
    data = load_kaggle(REAL_TGS)
    pred = solve_jigsaw(data.train.ids, data.train.images)
    got = pair_precision(pred, data.mosaics, data.train.ids)
    assert got["precision"] >= 0.95 and got["recall"] >= 0.8, got


def test_seam_check_flags_links_whose_edges_do_not_continue() -> None:
    from salt_exp.ensemble.jigsaw import seam_costs, untrusted_seams
    from salt_exp.ensemble.mosaic import MosaicIndex

    ids, images, truth = cut_field(3, 3, seed=3)
    tiles = dict(zip(ids, images, strict=True))
    index = MosaicIndex.from_frame(truth)
    costs = seam_costs(index, tiles)
    assert len(costs) == 6 and max(costs.values()) < 0.2  # every true vertical link continues
    assert untrusted_seams(index, tiles, 0.5) == set()
    # invert two tiles of the middle row (their edges anti-correlate with the rows around): those links break
    tiles["t10"], tiles["t11"] = 255 - tiles["t10"], 255 - tiles["t11"]
    cut = untrusted_seams(index, tiles, 0.5)
    assert cut == {("t00", "t10"), ("t10", "t20"), ("t01", "t11"), ("t11", "t21")}
    # a flat edge has no evidence either way: trusted
    tiles["t12"] = np.full((101, 101), 9, np.uint8)
    assert np.isnan(seam_costs(index, tiles)[("t02", "t12")]) and ("t02", "t12") not in untrusted_seams(index, tiles, 0.5)
