"""Writing synthetic tiles in the exact Kaggle layout and file formats, atomically.

Formats (as in the real competition files): images are 8-bit RGB PNGs with three equal channels;
non-empty masks are 16-bit single-channel PNGs with values 0/65535, empty masks are 8-bit zeros.
The whole tree is built in a temporary sibling directory and renamed onto the destination at the end.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from salt_exp.data.pngio import write_image, write_mask
from salt_exp.data.rle import rle_encode
from salt_exp.metrics import BIN_NAMES, coverage_bins


@dataclass(kw_only=True)
class Tile:
    """One 101x101 tile of a section: ``image`` uint8, ``label`` bool, position and depth."""

    mosaic: int
    x: int
    y: int
    z: int
    image: np.ndarray
    label: np.ndarray
    id: str = ""
    split: str = "train"
    public: bool = False
    blank: bool = False


def coverage_histogram(masks: Iterable[np.ndarray]) -> dict[str, int]:
    """Counts per coverage bin (the metric's bins, empty kept apart from almost empty), in bin order."""
    masks = list(masks)
    bins = coverage_bins(np.stack(masks)) if masks else np.zeros(0, np.int64)
    return {name: int((bins == i).sum()) for i, name in enumerate(BIN_NAMES)}


def _write_tile_files(root: Path, tile: Tile) -> None:
    write_image(root / tile.split / "images" / f"{tile.id}.png", tile.image)
    if tile.split == "train":
        write_mask(root / "train" / "masks" / f"{tile.id}.png", tile.label)


def _write_csv(path: Path, header: str, rows: Iterable[str]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(header + "\n")
        fh.writelines(row + "\n" for row in rows)


def _write_tables(root: Path, tiles: list[Tile]) -> None:
    by_id = sorted(tiles, key=lambda t: t.id)
    train = [t for t in by_id if t.split == "train"]
    test = [t for t in by_id if t.split == "test"]
    _write_csv(root / "train.csv", "id,rle_mask", (f"{t.id},{rle_encode(t.label)}" for t in train))
    _write_csv(root / "depths.csv", "id,z", (f"{t.id},{t.z}" for t in by_id))
    _write_csv(root / "sample_submission.csv", "id,rle_mask", (f"{t.id},1 1" for t in test))
    mosaic_rows = (f"{t.id},{t.x},{t.y},{t.mosaic}" for t in sorted(tiles, key=lambda t: (t.mosaic, t.y, t.x)))
    _write_csv(root / "mosaics.csv", "id,x,y,mosaic_id", mosaic_rows)
    usage = ("Public", "Private")
    solution_rows = (f"{t.id},{rle_encode(t.label)},{usage[0] if t.public else usage[1]}" for t in test)
    _write_csv(root / "solution.csv", "id,rle_mask,Usage", solution_rows)


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move ``tmp`` onto ``out``; an existing ``out`` is set aside first and removed only afterwards."""
    if not out.exists():
        os.replace(tmp, out)
        return
    trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    os.replace(out, trash / out.name)
    os.replace(tmp, out)
    shutil.rmtree(trash, ignore_errors=True)


def write_dataset(out: Path, tiles: list[Tile]) -> None:
    """Write every file under a temporary sibling of ``out``, then rename it onto ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the dataset is ordinary shared data
    try:
        for sub in ("train/images", "train/masks", "test/images"):
            (tmp / sub).mkdir(parents=True)
        for tile in tiles:
            _write_tile_files(tmp, tile)
        _write_tables(tmp, tiles)
        _replace_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
