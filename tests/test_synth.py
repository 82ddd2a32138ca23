"""The synthetic generator writes the exact Kaggle layout, with labels that follow the real logic."""

from __future__ import annotations

import filecmp
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from salt_exp.data.rle import rle_decode
from salt_exp.errors import SaltError
from salt_exp.synth import SynthConfig, generate_dataset
from salt_exp.synth.labels import TILE, annotate

SMALL = SynthConfig(seed=3, sections=2, tile_rows=3, tile_cols=3, empty_keep=1.0, blank_fraction=0.06)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth") / "data"
    return out, generate_dataset(out, SMALL)


def _csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _image(root: Path, tile_id: str, train_ids: set[str]) -> np.ndarray:
    split = "train" if tile_id in train_ids else "test"
    return cv2.imread(str(root / split / "images" / f"{tile_id}.png"), cv2.IMREAD_UNCHANGED)


def test_layout_and_summary(built: tuple[Path, dict]) -> None:
    root, summary = built
    train, test = _csv(root / "train.csv"), _csv(root / "sample_submission.csv")
    assert list(train.columns) == ["id", "rle_mask"] and list(test.columns) == ["id", "rle_mask"]
    assert summary["train"] == len(train) and summary["test"] == len(test) == round(0.25 * 18)
    assert (test.rle_mask == "1 1").all()
    assert sorted(p.stem for p in (root / "train/images").glob("*.png")) == sorted(train.id)
    assert sorted(p.stem for p in (root / "test/images").glob("*.png")) == sorted(test.id)
    ids = list(train.id) + list(test.id)
    assert len(set(ids)) == len(ids) and all(len(i) == 10 and int(i, 16) >= 0 and i == i.lower() for i in ids)
    assert sum(summary["coverage_bins"].values()) == len(train)
    assert not list(root.parent.glob(".data.*")), "the temporary directory must be gone"


def test_image_and_mask_formats(built: tuple[Path, dict]) -> None:
    root, _ = built
    train = _csv(root / "train.csv")
    for path in [*(root / "train/images").glob("*.png"), *(root / "test/images").glob("*.png")]:
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert image.dtype == np.uint8 and image.shape == (TILE, TILE, 3)
        assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()
    for tile_id, rle in zip(train.id, train.rle_mask, strict=True):
        mask = cv2.imread(str(root / "train/masks" / f"{tile_id}.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (TILE, TILE)
        if rle:
            assert mask.dtype == np.uint16 and set(np.unique(mask)) <= {0, 65535}
        else:
            assert mask.dtype == np.uint8 and not mask.any()
        np.testing.assert_array_equal(rle_decode(rle, (TILE, TILE)), (mask > 0).astype(np.uint8))
        assert (mask > 0).mean() < 1.0, "no mask covers its whole tile"


def test_depths_blanks_and_solution(built: tuple[Path, dict]) -> None:
    root, summary = built
    train, test = _csv(root / "train.csv"), _csv(root / "sample_submission.csv")
    depths = _csv(root / "depths.csv").astype({"z": int})
    assert set(depths.id) == set(train.id) | set(test.id)
    assert depths.z.between(50, 960).all()
    mosaics = _csv(root / "mosaics.csv").astype({"x": int, "y": int}).merge(depths, on="id")
    by_row = mosaics.groupby(["mosaic_id", "x"]).apply(lambda g: g.sort_values("y").z.is_monotonic_increasing)
    assert by_row.all(), "depth increases with the row inside a section"
    blanks = [i for i in train.id if np.ptp(_image(root, i, set(train.id))) == 0]
    assert summary["blank"] >= 1 and blanks
    assert (train.set_index("id").loc[blanks, "rle_mask"] == "").all()
    solution = _csv(root / "solution.csv")
    assert list(solution.columns) == ["id", "rle_mask", "Usage"] and set(solution.id) == set(test.id)
    assert set(solution.Usage) == {"Public", "Private"}


def test_mosaics_reassemble_into_continuous_sections(built: tuple[Path, dict]) -> None:
    root, _ = built
    train_ids = set(_csv(root / "train.csv").id)
    mosaics = _csv(root / "mosaics.csv").astype({"x": int, "y": int})
    assert not mosaics.duplicated(["mosaic_id", "x", "y"]).any()
    assert mosaics.mosaic_id.nunique() == SMALL.sections
    images = {i: _image(root, i, train_ids)[..., 0].astype(float) for i in mosaics.id}
    real = {i for i, im in images.items() if np.ptp(im) > 0}
    pos = {(r.mosaic_id, r.x, r.y): r.id for r in mosaics.itertuples() if r.id in real}
    adjacent = [
        np.abs(images[a][-1] - images[pos[(m, x, y + 1)]][0]).mean()
        for (m, x, y), a in pos.items()
        if (m, x, y + 1) in pos
    ]
    adjacent += [
        np.abs(images[a][:, -1] - images[pos[(m, x + 1, y)]][:, 0]).mean()
        for (m, x, y), a in pos.items()
        if (m, x + 1, y) in pos
    ]
    ids = sorted(real)
    unrelated = [np.abs(images[a][-1] - images[b][0]).mean() for a in ids for b in ids if a != b]
    assert len(adjacent) >= 10
    assert np.median(adjacent) < 0.5 * np.median(unrelated)


def test_annotation_logic_at_section_scale() -> None:
    salt = np.zeros((3 * TILE, 2 * TILE), dtype=bool)
    salt[150:, :TILE] = True  # a flat-topped body in column 0: its top tile is a cap
    salt[40:, TILE + 60 :] = True  # a vertical flank in column 1
    salt[2 * TILE + 80 :, TILE + 30 : TILE + 60] = True  # ...with a small deeper bulge the annotators ignore
    labels = annotate(salt)
    assert labels[1, 0].any() and not labels[1, 0].all()
    assert not labels[2, 0].any(), "tiles below a cap are empty"
    assert labels[0, 1].any()
    np.testing.assert_array_equal(labels[2, 1], np.broadcast_to(labels[1, 1][-1], (TILE, TILE)))
    salt[2 * TILE + 20 :, TILE : TILE + 60] = True  # a large change stops the straight line
    np.testing.assert_array_equal(annotate(salt)[2, 1], salt[2 * TILE :, TILE:])
    full = np.ones((TILE, TILE), dtype=bool)
    assert not annotate(full).any(), "a tile wholly inside salt is labelled empty"


def test_same_seed_same_bytes_other_seed_differs(built: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = built
    again = tmp_path / "again"
    generate_dataset(again, SMALL)
    for name in ("train.csv", "depths.csv", "mosaics.csv", "solution.csv", "sample_submission.csv"):
        assert filecmp.cmp(root / name, again / name, shallow=False), name
    first = sorted((root / "train/images").glob("*.png"))[0]
    assert first.read_bytes() == (again / "train/images" / first.name).read_bytes()
    other = tmp_path / "other"
    generate_dataset(other, SynthConfig(**{**SMALL.__dict__, "seed": 4}))
    assert (root / "train.csv").read_bytes() != (other / "train.csv").read_bytes()


def test_existing_output_is_refused_untouched(tmp_path: Path) -> None:
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(SaltError, match="not empty"):
        generate_dataset(out, SMALL)
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    with pytest.raises(SaltError, match="sections"):
        SynthConfig(sections=0)


def test_overwrite_replaces_the_directory(tmp_path: Path) -> None:
    out = tmp_path / "data"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    generate_dataset(out, SynthConfig(seed=1, sections=1, tile_rows=2, tile_cols=2), overwrite=True)
    assert not (out / "stale.txt").exists() and (out / "train.csv").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["data"], "no temporary siblings left"


def test_failure_leaves_nothing_half_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import salt_exp.synth.write as synth_write

    def broken(root: Path, tiles: list) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(synth_write, "_write_tables", broken)
    with pytest.raises(OSError, match="disk full"):
        generate_dataset(tmp_path / "data", SynthConfig(seed=1, sections=1, tile_rows=2, tile_cols=2))
    assert list(tmp_path.iterdir()) == []
