import os
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from salt_exp.data import cache
from salt_exp.data.kaggle import load_kaggle, scan_kaggle
from salt_exp.data.rle import rle_encode
from salt_exp.errors import SaltError
from tests.conftest import REAL_TGS, make_tiles


def test_loads_real_formats(kaggle_dir):
    data = load_kaggle(kaggle_dir, cache=False)
    ids, images, masks = make_tiles(16)
    assert data.train.ids.tolist() == ids[:12] and data.test.ids.tolist() == ids[12:]
    assert data.train.images.dtype == np.uint8 and np.array_equal(data.train.images, images[:12])
    assert np.array_equal(data.train.masks, masks[:12]) and set(np.unique(data.train.masks)) <= {0, 1}
    assert data.train.blank.tolist() == [True] + [False] * 11
    assert data.train.depths.tolist() == [50 + 10 * i for i in range(12)]
    assert data.mosaics is not None and len(data.mosaics) == 16
    # the files really are in the Kaggle formats: RGB 8-bit images, 16-bit 0/65535 or 8-bit empty masks
    img = cv2.imread(str(kaggle_dir / "train/images" / f"{ids[1]}.png"), cv2.IMREAD_UNCHANGED)
    full = cv2.imread(str(kaggle_dir / "train/masks" / f"{ids[1]}.png"), cv2.IMREAD_UNCHANGED)
    empty = cv2.imread(str(kaggle_dir / "train/masks" / f"{ids[0]}.png"), cv2.IMREAD_UNCHANGED)
    assert img.shape == (101, 101, 3) and full.dtype == np.uint16 and full.max() == 65535 and empty.dtype == np.uint8


def _one_line_error(root: Path, *fragments: str) -> str:
    with pytest.raises(SaltError) as err:
        load_kaggle(root, cache=False)
    msg = str(err.value)
    assert "\n" not in msg
    for frag in fragments:
        assert frag in msg, msg
    return msg


def _first_id(root: Path) -> str:
    return pd.read_csv(root / "train.csv")["id"].iloc[1]


def test_missing_folder_and_files(tmp_path, kaggle_dir):
    _one_line_error(tmp_path / "nope", "nope", "not found")
    (kaggle_dir / "depths.csv").unlink()
    _one_line_error(kaggle_dir, "depths.csv", "not found")


def test_missing_train_images_folder(kaggle_dir):
    for f in (kaggle_dir / "train/images").iterdir():
        f.unlink()
    (kaggle_dir / "train/images").rmdir()
    _one_line_error(kaggle_dir, "train/images", "missing folder")


def test_id_without_image_or_mask(kaggle_dir):
    tid = _first_id(kaggle_dir)
    (kaggle_dir / "train/masks" / f"{tid}.png").unlink()
    _one_line_error(kaggle_dir, tid, "no mask")


def test_wrong_image_size(kaggle_dir):
    tid = _first_id(kaggle_dir)
    cv2.imwrite(str(kaggle_dir / "train/images" / f"{tid}.png"), np.zeros((64, 64, 3), np.uint8))
    _one_line_error(kaggle_dir, f"{tid}.png", "101x101", "64x64")


def test_corrupt_png(kaggle_dir):
    tid = _first_id(kaggle_dir)
    (kaggle_dir / "train/images" / f"{tid}.png").write_bytes(b"\x89PNG\r\n\x1a\ngarbage")
    _one_line_error(kaggle_dir, f"{tid}.png", "corrupt")


def test_bad_mask_values(kaggle_dir):
    tid = _first_id(kaggle_dir)
    cv2.imwrite(str(kaggle_dir / "train/masks" / f"{tid}.png"), np.full((101, 101), 7, np.uint16))
    _one_line_error(kaggle_dir, f"{tid}.png", "mask values", "65535")


def test_rle_mismatch(kaggle_dir):
    df = pd.read_csv(kaggle_dir / "train.csv", keep_default_na=False)
    tid = df["id"].iloc[1]
    df.loc[1, "rle_mask"] = "1 5"
    df.to_csv(kaggle_dir / "train.csv", index=False)
    _one_line_error(kaggle_dir, "train.csv", tid, "does not match")


def test_duplicate_ids(kaggle_dir):
    df = pd.read_csv(kaggle_dir / "train.csv", keep_default_na=False)
    pd.concat([df, df.iloc[[2]]]).to_csv(kaggle_dir / "train.csv", index=False)
    _one_line_error(kaggle_dir, "train.csv", "duplicate id", df["id"].iloc[2])


def test_missing_depth(kaggle_dir):
    df = pd.read_csv(kaggle_dir / "depths.csv")
    tid = _first_id(kaggle_dir)
    df[df["id"] != tid].to_csv(kaggle_dir / "depths.csv", index=False)
    _one_line_error(kaggle_dir, "depths.csv", "missing depth", tid)


def test_non_numeric_depth(kaggle_dir):
    df = pd.read_csv(kaggle_dir / "depths.csv")
    df["z"] = df["z"].astype(str)
    df.loc[3, "z"] = "deep"
    df.to_csv(kaggle_dir / "depths.csv", index=False)
    _one_line_error(kaggle_dir, "depths.csv", "column z", "deep")


@pytest.mark.parametrize("name,header", [("train.csv", "id,mask"), ("depths.csv", "z,id"), ("mosaics.csv", "id,x,y")])
def test_malformed_header(kaggle_dir, name, header):
    lines = (kaggle_dir / name).read_text().splitlines()
    (kaggle_dir / name).write_text("\n".join([header] + lines[1:]) + "\n")
    _one_line_error(kaggle_dir, name, "malformed CSV header")


def test_scan_collects_every_problem(kaggle_dir):
    ids = pd.read_csv(kaggle_dir / "train.csv")["id"].tolist()
    (kaggle_dir / "train/images" / f"{ids[1]}.png").write_bytes(b"not a png")
    (kaggle_dir / "train/masks" / f"{ids[2]}.png").unlink()
    _, problems = scan_kaggle(kaggle_dir)
    assert any(ids[1] in p and "corrupt" in p for p in problems)
    assert any(ids[2] in p and "no mask" in p for p in problems)


def test_failed_load_writes_no_cache(kaggle_dir):
    (kaggle_dir / "train/images" / f"{_first_id(kaggle_dir)}.png").write_bytes(b"x")
    with pytest.raises(SaltError):
        load_kaggle(kaggle_dir)
    assert not list(cache.cache_dir().glob("tiles-*.npz")) or cache.load(kaggle_dir) is None


def test_cache_hit_and_invalidation(kaggle_dir):
    first = load_kaggle(kaggle_dir)
    assert cache.load(kaggle_dir) is not None
    again = load_kaggle(kaggle_dir)
    assert np.array_equal(first.train.images, again.train.images) and again.mosaics.equals(first.mosaics)
    # rewrite a mask (and its RLE) -> the cache is stale and the new content is read
    ids = first.train.ids.tolist()
    new = np.zeros((101, 101), np.uint16)
    new[50:, :] = 65535
    path = kaggle_dir / "train/masks" / f"{ids[3]}.png"
    cv2.imwrite(str(path), new)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    df = pd.read_csv(kaggle_dir / "train.csv", keep_default_na=False)
    df.loc[3, "rle_mask"] = rle_encode(new)
    df.to_csv(kaggle_dir / "train.csv", index=False)
    assert cache.load(kaggle_dir) is None
    assert load_kaggle(kaggle_dir).train.masks[3].sum() == 51 * 101


@pytest.mark.realdata
@pytest.mark.skipif(not REAL_TGS.exists(), reason="real TGS data not present at ../shared/tgs")
def test_real_tgs_loads_and_reencodes_exactly():
    data = load_kaggle(REAL_TGS)
    assert len(data.train) == 3000
    assert int((data.train.masks.reshape(3000, -1).max(axis=1) == 0).sum()) == 1140
    csv = pd.read_csv(REAL_TGS / "train.csv", keep_default_na=False).set_index("id")["rle_mask"]
    encoded = [rle_encode(m) for m in data.train.masks]
    assert encoded == [csv[i] for i in data.train.ids]
    assert data.train.blank.sum() > 0 and (data.train.masks[data.train.blank].sum() == 0)
