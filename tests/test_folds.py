import numpy as np
import pandas as pd
import pytest

from salt_exp.data.folds import SCHEMES, folds_path, load_or_create_folds, make_folds
from salt_exp.data.kaggle import load_kaggle
from salt_exp.errors import SaltError
from tests.conftest import write_kaggle


@pytest.fixture
def data(tmp_path):
    return load_kaggle(write_kaggle(tmp_path / "tgs", n=40, n_test=0), cache=False)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_tile_in_exactly_one_fold_and_seeded(data, scheme):
    folds = make_folds(data, scheme, k=4, seed=1)
    assert sorted(set(folds.tolist())) == [0, 1, 2, 3]
    assert np.array_equal(folds, make_folds(data, scheme, k=4, seed=1))
    sizes = np.bincount(folds)
    assert sizes.min() >= 4


def test_random_folds_change_with_seed(data):
    assert not np.array_equal(make_folds(data, "random", 4, 1), make_folds(data, "random", 4, 2))


def test_mosaic_folds_keep_a_mosaic_together(data):
    folds = make_folds(data, "mosaic", k=4, seed=0)
    by_id = dict(zip(data.train.ids, folds, strict=True))
    for _, group in data.mosaics[data.mosaics["id"].isin(by_id)].groupby("mosaic_id"):
        assert len({by_id[i] for i in group["id"]}) == 1


def test_coverage_folds_balance_empty_share(data):
    folds = make_folds(data, "coverage", k=4, seed=0)
    empty = data.train.masks.reshape(len(folds), -1).max(1) == 0
    shares = [empty[folds == f].mean() for f in range(4)]
    assert max(shares) - min(shares) <= 0.15


def test_persisted_once_and_reused(data):
    first = load_or_create_folds(data, "random", 5, 42)
    path = folds_path(data, "random", 5, 42)
    assert path.exists()
    # a later code change in the split must not move tiles: the file wins
    edited = pd.read_csv(path)
    edited["fold"] = (edited["fold"] + 1) % 5
    edited.to_csv(path, index=False)
    again = load_or_create_folds(data, "random", 5, 42)
    assert (again["fold"].to_numpy() == (first["fold"].to_numpy() + 1) % 5).all()
    assert again["id"].tolist() == data.train.ids.tolist()


def test_persisted_file_for_other_ids_is_an_error(data):
    load_or_create_folds(data, "random", 5, 42)
    path = folds_path(data, "random", 5, 42)
    pd.read_csv(path).iloc[1:].to_csv(path, index=False)
    with pytest.raises(SaltError, match="ids do not match"):
        load_or_create_folds(data, "random", 5, 42)


def test_unknown_scheme_lists_valid(data):
    with pytest.raises(SaltError, match="random, coverage, depth, mosaic"):
        make_folds(data, "stripes")
