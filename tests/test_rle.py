import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from salt_exp.data.rle import rle_decode, rle_encode
from salt_exp.errors import SaltError


def test_column_major_one_indexed():
    mask = np.zeros((101, 101), np.uint8)
    mask[0:3, 0] = 1  # first column, top three pixels -> pixels 1..3
    mask[0, 1] = 1  # second column, top pixel -> pixel 102
    mask[100, 100] = 1  # last pixel
    assert rle_encode(mask) == "1 3 102 1 10201 1"


def test_empty_mask_is_empty_string():
    assert rle_encode(np.zeros((101, 101), np.uint8)) == ""
    assert rle_decode("").sum() == 0
    assert rle_decode(float("nan")).sum() == 0


@settings(max_examples=200, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 12), st.integers(1, 12)), elements=st.integers(0, 1)))
def test_round_trip_property(mask):
    assert np.array_equal(rle_decode(rle_encode(mask), mask.shape), mask)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 5), st.integers(1, 5)), min_size=1, max_size=20))
def test_decode_encode_canonical(gaps_and_runs):
    pos, pairs = 1, []
    for gap, run in gaps_and_runs:
        pos += gap
        pairs += [pos, run]
        pos += run
    rle = " ".join(map(str, pairs))
    assert rle_encode(rle_decode(rle, (30, 10))) == rle


@pytest.mark.parametrize("bad", ["1", "a b", "0 3", "1 0", "10200 5", "5 3 6 2", "1 -2"])
def test_malformed_rle_is_one_line_error(bad):
    with pytest.raises(SaltError) as err:
        rle_decode(bad, where="sub.csv id=x rle_mask")
    assert "sub.csv id=x rle_mask" in str(err.value) and "\n" not in str(err.value)
