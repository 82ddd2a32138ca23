"""Cross-validation folds, persisted once per dataset + scheme + k + seed and shared by every run.

Schemes: ``random`` (shuffled K-fold), ``coverage`` (stratified by coverage bin),
``depth`` (stratified by depth decile) and ``mosaic`` (a mosaic's tiles stay in one fold,
so neighbouring tiles cannot leak across folds; tiles without a mosaic are their own group).
Sharing the folds is what lets ensembles of different pipelines be cross-validated.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import KFold, StratifiedGroupKFold, StratifiedKFold

from salt_exp.data.kaggle import KaggleData
from salt_exp.data.tables import read_table
from salt_exp.errors import SaltError
from salt_exp.io import atomic_open
from salt_exp.metrics import coverage_bins
from salt_exp.stores import folds_root

SCHEMES = ("random", "coverage", "depth", "mosaic")


def _check_scheme(scheme: str, k: int, n: int) -> None:
    if scheme not in SCHEMES:
        raise SaltError(f"folds scheme {scheme!r} is unknown; valid schemes: {', '.join(SCHEMES)}")
    if not 2 <= k <= n:
        raise SaltError(f"folds k={k} must be between 2 and the number of tiles ({n})")


def make_folds(data: KaggleData, scheme: str = "random", k: int = 5, seed: int = 42) -> np.ndarray:
    """Fold index (0..k-1) for every train tile, in ``data.train.ids`` order."""
    train = data.train
    n = len(train)
    _check_scheme(scheme, k, n)
    folds = np.full(n, -1, dtype=np.int64)
    x = np.zeros(n)
    if scheme == "random":
        splits = KFold(k, shuffle=True, random_state=seed).split(x)
    elif scheme == "coverage":
        splits = StratifiedKFold(k, shuffle=True, random_state=seed).split(x, coverage_bins(train.masks))
    elif scheme == "depth":
        edges = np.quantile(train.depths, np.linspace(0, 1, 11)[1:-1])
        splits = StratifiedKFold(k, shuffle=True, random_state=seed).split(x, np.digitize(train.depths, edges))
    else:
        groups = _mosaic_groups(data)
        if len(set(groups)) < k:
            raise SaltError(f"folds scheme 'mosaic' with k={k}: the data has only {len(set(groups))} groups (mosaics and "
                            "tiles outside any mosaic); use fewer folds (data.n_folds) or another scheme")
        empty = train.masks.reshape(n, -1).max(axis=1) == 0
        splits = StratifiedGroupKFold(k, shuffle=True, random_state=seed).split(x, empty, groups)
    for fold, (_, val) in enumerate(splits):
        folds[val] = fold
    return folds


def _mosaic_groups(data: KaggleData) -> np.ndarray:
    ids = data.train.ids.tolist()
    own = {tid: f"tile:{tid}" for tid in ids}
    if data.mosaics is None:
        raise SaltError(f"{data.root / 'mosaics.csv'}: file not found (folds scheme 'mosaic' needs it)")
    own.update({tid: f"mosaic:{m}" for tid, m in zip(data.mosaics["id"], data.mosaics["mosaic_id"], strict=True)})
    return np.array([own[tid] for tid in ids])


def folds_path(data: KaggleData, scheme: str, k: int, seed: int) -> Path:
    """One file per dataset (its name and a hash of its train ids) + scheme + k + seed."""
    digest = hashlib.sha1("\n".join(sorted(data.train.ids.tolist())).encode()).hexdigest()[:10]
    return folds_root() / f"{Path(data.root).resolve().name}-{digest}" / f"{scheme}-k{k}-seed{seed}.csv"


def load_or_create_folds(data: KaggleData, scheme: str = "random", k: int = 5, seed: int = 42) -> pd.DataFrame:
    """The persisted folds (columns id, fold), created on first use and reused afterwards.

    A stored file whose ids do not match the dataset raises SaltError instead of being overwritten.
    """
    path = folds_path(data, scheme, k, seed)
    if path.exists():
        df = read_table(path, "folds")
        if sorted(df["id"]) != sorted(data.train.ids.tolist()):
            raise SaltError(f"{path}: ids do not match the dataset at {data.root}; delete the file to recreate it")
        df["fold"] = df["fold"].astype(np.int64)
        return df.set_index("id").loc[data.train.ids].reset_index()
    df = pd.DataFrame({"id": data.train.ids, "fold": make_folds(data, scheme, k, seed)})
    with atomic_open(path, "w", newline="") as fh:
        df.to_csv(fh, index=False)
    return df


def fold_balance(data: KaggleData, folds: np.ndarray) -> list[dict[str, float | int]]:
    """Per fold: size, share of empty masks, mean salt coverage and mean depth."""
    masks = data.train.masks.reshape(len(data.train), -1)
    coverage = masks.mean(axis=1)
    rows = []
    for f in np.unique(folds):
        sel = folds == f
        rows.append({
            "fold": int(f), "size": int(sel.sum()),
            "empty_share": float((coverage[sel] == 0).mean()),
            "mean_coverage": float(coverage[sel].mean()),
            "mean_depth": float(data.train.depths[sel].mean()),
        })
    return rows
