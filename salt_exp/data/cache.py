"""An in-memory copy of a validated dataset, kept as one .npz file per dataset.

The cache key is a hash of the absolute root path and of the name, size and
modification time of every file of the layout, so any change to the files
(added, removed, rewritten) invalidates it. The cache folder is
``salt_exp.stores.dataset_cache()`` (``$SALT_EXP_CACHE`` or ``~/.cache/salt-exp``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd

from salt_exp.data.kaggle import KaggleData, TileSet
from salt_exp.io import atomic_path
from salt_exp.stores import dataset_cache

_FILES = ("train.csv", "depths.csv", "mosaics.csv", "sample_submission.csv")
_DIRS = ("train/images", "train/masks", "test/images")
_VERSION = "1"


def cache_dir() -> Path:
    return dataset_cache()


def fingerprint(root: str | Path) -> str:
    """Hash of the root path and the (name, size, mtime) of every file of the layout."""
    root = Path(root).resolve()
    h = hashlib.sha1(f"{_VERSION}|{root}".encode())
    for name in _FILES:
        p = root / name
        if p.exists():
            st = p.stat()
            h.update(f"|{name}:{st.st_size}:{st.st_mtime_ns}".encode())
    for sub in _DIRS:
        folder = root / sub
        if folder.is_dir():
            with os.scandir(folder) as it:
                entries = sorted(_entry(e) for e in it)
            h.update(f"|{sub}:{entries}".encode())
    return h.hexdigest()[:20]


def _entry(e: os.DirEntry) -> tuple[str, int, int]:
    """(name, size, mtime) of a folder entry; a broken link counts as its own (the reader reports the file)."""
    try:
        st = e.stat()
    except OSError:
        st = e.stat(follow_symlinks=False)
    return e.name, st.st_size, st.st_mtime_ns


def _path(root: str | Path) -> tuple[Path, str]:
    key = hashlib.sha1(str(Path(root).resolve()).encode()).hexdigest()[:12]
    return cache_dir() / f"tiles-{key}.npz", fingerprint(root)


def load(root: str | Path) -> KaggleData | None:
    """The cached dataset, or None when absent, stale or unreadable."""
    path, fp = _path(root)
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["fingerprint"]) != fp:
                return None
            train = TileSet(z["train_ids"], z["train_images"], z["train_depths"], z["train_masks"])
            test = TileSet(z["test_ids"], z["test_images"], z["test_depths"]) if "test_ids" in z else None
            mosaics = None
            if "mosaic_ids" in z:
                mosaics = pd.DataFrame({"id": z["mosaic_ids"], "x": z["mosaic_x"], "y": z["mosaic_y"], "mosaic_id": z["mosaic_mid"]})
    except (OSError, KeyError, ValueError):
        return None
    return KaggleData(Path(root), train, test, mosaics)


def save(data: KaggleData) -> None:
    """Store a validated dataset (atomically; a failure to write only costs speed next time)."""
    path, fp = _path(data.root)
    arrays: dict[str, np.ndarray] = {
        "fingerprint": np.array(fp),
        "train_ids": data.train.ids, "train_images": data.train.images,
        "train_depths": data.train.depths, "train_masks": data.train.masks,
    }
    if data.test is not None:
        arrays.update(test_ids=data.test.ids, test_images=data.test.images, test_depths=data.test.depths)
    if data.mosaics is not None:
        m = data.mosaics
        arrays.update(mosaic_ids=m["id"].to_numpy(str), mosaic_x=m["x"].to_numpy(), mosaic_y=m["y"].to_numpy(),
                      mosaic_mid=m["mosaic_id"].to_numpy())
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)
    except OSError:
        pass
