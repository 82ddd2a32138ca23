"""Reader and validator for the TGS Kaggle layout.

Layout: ``train/images/<id>.png``, ``train/masks/<id>.png``, ``train.csv`` (id,rle_mask),
``depths.csv`` (id,z; train and test ids), optional ``test/images/<id>.png``,
``sample_submission.csv`` (id,rle_mask) and ``mosaics.csv`` (id,x,y,mosaic_id).
``scan_kaggle`` collects every problem it finds; ``load_kaggle`` raises on the first
one and keeps a validated in-memory copy in a cache that follows the files.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from salt_exp.data.pngio import TileProblem, read_image, read_mask
from salt_exp.data.rle import rle_encode
from salt_exp.data.tables import duplicated_ids, numeric_column, read_table
from salt_exp.errors import SaltError


def blank_images(images: np.ndarray) -> np.ndarray:
    """(N,) bool: which of the (N, H, W) images hold a single constant value (the competition's blank tiles)."""
    flat = np.asarray(images).reshape(len(images), -1)
    return flat.min(axis=1) == flat.max(axis=1)


@dataclass(frozen=True)
class TileSet:
    """Tiles held in memory: ids (N,), images (N,101,101) uint8, depths (N,) float32, masks 0/1 or None."""

    ids: np.ndarray
    images: np.ndarray
    depths: np.ndarray
    masks: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def blank(self) -> np.ndarray:
        """(N,) bool: tiles of a single constant value."""
        return blank_images(self.images)

    def position(self, ids: list[str] | np.ndarray) -> np.ndarray:
        """Row indices of ``ids``; SaltError naming the first unknown id."""
        lookup = {k: i for i, k in enumerate(self.ids.tolist())}
        missing = [k for k in ids if k not in lookup]
        if missing:
            raise SaltError(f"id {missing[0]} is not in this tile set ({len(missing)} unknown ids)")
        return np.array([lookup[k] for k in ids], dtype=np.int64)


@dataclass(frozen=True)
class KaggleData:
    """A whole dataset in the Kaggle layout; ``test`` and ``mosaics`` are optional."""

    root: Path
    train: TileSet
    test: TileSet | None
    mosaics: pd.DataFrame | None


def _read_many(paths: list[Path], reader: Callable[[Path], np.ndarray], problems: list[str]) -> np.ndarray:
    """Read tiles in a thread pool (cv2 releases the GIL); unreadable ones become zeros plus a problem."""

    def one(path: Path) -> np.ndarray | str:
        try:
            return reader(path)
        except TileProblem as exc:
            return str(exc)

    out = np.zeros((len(paths), 101, 101), dtype=np.uint8)
    with ThreadPoolExecutor(max_workers=4) as pool:
        for i, res in enumerate(pool.map(one, paths)):
            if isinstance(res, str):
                problems.append(res)
            else:
                out[i] = res
    return out


def _require(path: Path, what: str) -> None:
    if not path.exists():
        raise SaltError(f"{path}: missing {what} (expected the Kaggle TGS layout)")


def _ids_with_files(ids: list[str], folder: Path, label: str, problems: list[str]) -> None:
    present = {p.stem for p in folder.glob("*.png")}
    problems.extend(f"{label}: id {i} has no {folder.name[:-1]} {folder / (i + '.png')}" for i in ids if i not in present)
    extra = sorted(present - set(ids))
    problems.extend(f"{folder / (i + '.png')}: id {i} is not listed in {label}" for i in extra[:20])


def _depths_for(ids: list[str], depths: dict[str, float], problems: list[str], where: Path) -> np.ndarray:
    missing = [i for i in ids if i not in depths]
    problems.extend(f"{where}: missing depth for id {i}" for i in missing[:20])
    return np.array([depths.get(i, np.nan) for i in ids], dtype=np.float32)


def _check_rle(ids: list[str], rles: list[str], masks: np.ndarray, problems: list[str], *, where: Path) -> None:
    for i, (tid, rle) in enumerate(zip(ids, rles, strict=True)):
        if " ".join(rle.split()) != rle_encode(masks[i]):
            problems.append(f"{where}: rle_mask of id {tid} does not match train/masks/{tid}.png")


def _read_depths(root: Path, problems: list[str]) -> dict[str, float]:
    df = read_table(root / "depths.csv", "depths.csv")
    problems.extend(f"{root / 'depths.csv'}: duplicate id {i}" for i in duplicated_ids(df))
    return dict(zip(df["id"], numeric_column(df, "z", root / "depths.csv").tolist(), strict=True))


def _read_train(root: Path, depths: dict[str, float], problems: list[str]) -> TileSet:
    for sub in ("train", "train/images", "train/masks"):
        _require(root / sub, "folder")
    df = read_table(root / "train.csv", "train.csv")
    if df.empty:
        raise SaltError(f"{root / 'train.csv'}: no rows (expected one id,rle_mask row per training tile)")
    problems.extend(f"{root / 'train.csv'}: duplicate id {i}" for i in duplicated_ids(df))
    ids = df["id"].tolist()
    _ids_with_files(ids, root / "train/images", "train.csv", problems)
    _ids_with_files(ids, root / "train/masks", "train.csv", problems)
    n_before = len(problems)
    images = _read_many([root / "train/images" / f"{i}.png" for i in ids], read_image, problems)
    masks = _read_many([root / "train/masks" / f"{i}.png" for i in ids], read_mask, problems)
    if len(problems) == n_before:  # RLE only makes sense against masks that all read
        _check_rle(ids, df["rle_mask"].tolist(), masks, problems, where=root / "train.csv")
    tile_depths = _depths_for(ids, depths, problems, root / "depths.csv")
    return TileSet(np.array(ids, dtype=str), images, tile_depths, masks)


def _read_test(root: Path, depths: dict[str, float], problems: list[str]) -> TileSet | None:
    folder, sample = root / "test/images", root / "sample_submission.csv"
    if not folder.is_dir():
        if sample.exists():
            problems.append(f"{folder}: missing folder (sample_submission.csv lists test ids)")
        return None
    if sample.exists():
        df = read_table(sample, "sample_submission.csv")
        problems.extend(f"{sample}: duplicate id {i}" for i in duplicated_ids(df))
        ids = df["id"].tolist()
        _ids_with_files(ids, folder, "sample_submission.csv", problems)
    else:
        ids = sorted(p.stem for p in folder.glob("*.png"))
    images = _read_many([folder / f"{i}.png" for i in ids], read_image, problems)
    return TileSet(np.array(ids, dtype=str), images, _depths_for(ids, depths, problems, root / "depths.csv"))


def _read_mosaics(root: Path, problems: list[str]) -> pd.DataFrame | None:
    path = root / "mosaics.csv"
    if not path.exists():
        return None
    df = read_table(path, "mosaics.csv")
    problems.extend(f"{path}: duplicate id {i}" for i in duplicated_ids(df))
    out = pd.DataFrame({"id": df["id"]})
    for col in ("x", "y", "mosaic_id"):
        out[col] = numeric_column(df, col, path, integer=True)
    # Shared positions are not a problem: the real reconstruction has a few (duplicate tiles).
    return out


def scan_kaggle(root: str | Path) -> tuple[KaggleData, list[str]]:
    """Read and validate a dataset, returning it with every problem found (one line each).

    Structural problems that make reading impossible (missing folder or CSV, bad header)
    raise SaltError immediately.
    """
    root = Path(root)
    if not root.is_dir():
        what = "is a file, not a data folder" if root.exists() else "data folder not found"
        raise SaltError(f"{root}: {what} (expected the Kaggle TGS layout)")
    problems: list[str] = []
    depths = _read_depths(root, problems)
    train = _read_train(root, depths, problems)
    test = _read_test(root, depths, problems)
    mosaics = _read_mosaics(root, problems)
    return KaggleData(root, train, test, mosaics), problems


def load_kaggle(root: str | Path, *, cache: bool = True) -> KaggleData:
    """Load a validated dataset, from the cache when the files have not changed.

    Raises SaltError with the first problem found (and how many more there are).
    """
    from salt_exp.data import cache as tile_cache  # local: keeps this module free of cache I/O

    if cache:
        hit = tile_cache.load(root)
        if hit is not None:
            return hit
    data, problems = scan_kaggle(root)
    if problems:
        more = f" (and {len(problems) - 1} more problems; run `salt-exp data check {root}`)" if len(problems) > 1 else ""
        raise SaltError(problems[0] + more)
    if cache:
        tile_cache.save(data)
    return data


def load_test_tiles(root: str | Path) -> tuple[TileSet, pd.DataFrame | None]:
    """The test tiles of a Kaggle-layout folder and its mosaics.csv (None when absent), for prediction: only
    ``test/images`` is required (ids from sample_submission.csv, else the file names); a depth missing from
    depths.csv is NaN here (a model that reads depths says so). SaltError with the first problem."""
    root = Path(root)
    if not root.is_dir():
        raise SaltError(f"{root}: data folder not found (expected the Kaggle TGS layout with test/images)")
    if not (root / "test/images").is_dir():
        raise SaltError(f"{root / 'test/images'}: missing folder (expected the Kaggle layout's test tiles)")
    problems: list[str] = []
    depths = _read_depths(root, problems) if (root / "depths.csv").exists() else {}
    test = _read_test(root, depths, problems)
    mosaics = _read_mosaics(root, problems)
    problems = [p for p in problems if "missing depth" not in p]
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise SaltError(problems[0] + more)
    if test is None or not len(test):
        raise SaltError(f"{root / 'test/images'}: no test tiles (.png) found")
    return test, mosaics
