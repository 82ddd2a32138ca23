"""MosaicIndex: neighbour lookups, column walks, shared positions and assembly."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from salt_exp.ensemble.mosaic import MosaicIndex
from salt_exp.errors import SaltError


def frame(rows: list[tuple[str, int, int, int]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["id", "x", "y", "mosaic_id"])


@pytest.fixture
def index() -> MosaicIndex:
    # mosaic 0: 3 columns x 2 rows, plus "g" at (0, 3) below a gap; mosaic 1: a tile at the same x, y as "a".
    return MosaicIndex.from_frame(frame([
        ("a", 0, 0, 0), ("b", 1, 0, 0), ("c", 2, 0, 0),
        ("d", 0, 1, 0), ("e", 1, 1, 0), ("f", 2, 1, 0),
        ("g", 0, 3, 0), ("z", 0, 0, 1),
    ]))


def test_neighbour_lookups(index: MosaicIndex) -> None:
    assert (index.above("e"), index.below("b"), index.left("e"), index.right("e")) == ("b", "e", "d", "f")
    assert index.above("a") is None and index.left("a") is None and index.right("c") is None
    assert index.below("z") is None and index.right("z") is None  # other mosaic: a's neighbours are not z's
    assert index.above("unknown") is None and "unknown" not in index and "a" in index


def test_column_walks_stop_at_gaps(index: MosaicIndex) -> None:
    assert list(index.column_below("a")) == ["d"]
    assert list(index.column_below("a", skip_gaps=True)) == ["d", "g"]
    assert list(index.column_below("g")) == [] and list(index.column_below("nope")) == []
    assert sorted(index.columns()) == [["a", "d"], ["b", "e"], ["c", "f"], ["g"], ["z"]]


def test_shared_position_keeps_the_first_tile() -> None:
    index = MosaicIndex.from_frame(frame([("a", 0, 0, 0), ("b", 0, 1, 0), ("dup", 0, 1, 0)]))
    assert index.below("a") == "b"  # the first listed tile owns (0, 1)
    assert index.above("dup") == "a"  # the duplicate still knows where it is
    assert list(index.columns()) == [["a", "b"]]


def test_assemble_places_tiles_and_fills_gaps(index: MosaicIndex) -> None:
    tiles = {t: np.full((101, 101), k, np.uint8) for k, t in enumerate("abcdefg", start=1)}
    del tiles["f"]
    img = index.assemble(0, tiles)
    assert img.shape == (4 * 101, 3 * 101) and img.dtype == np.float32
    assert img[0, 0] == 1 and img[0, 101] == 2 and img[101, 0] == 4 and img[303, 0] == 7
    assert np.isnan(img[101:202, 202:]).all() and np.isnan(img[202:303]).all()
    zero = index.assemble(0, tiles, fill=0)
    assert zero.dtype == np.uint8 and zero[150, 250] == 0
    assert index.shape(0) == (4, 3) and index.shape(1) == (1, 1) and index.mosaic_ids == [0, 1]


def test_offset_coordinates_assemble_from_the_minimum() -> None:
    index = MosaicIndex.from_frame(frame([("a", -2, 5, 3), ("b", -1, 5, 3)]))
    img = index.assemble(3, {"a": np.zeros((101, 101)), "b": np.ones((101, 101))})
    assert img.shape == (101, 202) and img[0, 0] == 0 and img[0, 101] == 1


def test_bad_tables_raise() -> None:
    with pytest.raises(SaltError, match="mosaic_id"):
        MosaicIndex.from_frame(pd.DataFrame({"id": ["a"], "x": [0], "y": [0]}))
    with pytest.raises(SaltError, match="twice"):
        MosaicIndex.from_frame(frame([("a", 0, 0, 0), ("a", 1, 0, 0)]))
    with pytest.raises(SaltError, match="unknown mosaic_id 9"):
        MosaicIndex.from_frame(frame([("a", 0, 0, 0)])).shape(9)
