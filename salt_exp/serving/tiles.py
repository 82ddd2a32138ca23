"""What a model accepts as tiles: (N, 101, 101) grayscale on the PNG's 0-255 scale, uint8 or float.

MLflow enforces a tensor signature's dtype exactly, so the signature says float32; this module turns
whatever reached the model (float32 from the signature or a JSON request, uint8 from our own callers)
into the uint8 tiles the network was trained on, and refuses anything else in one line.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from salt_exp.errors import SaltError

TILE = 101


def as_tiles(values: Any, where: str = "tiles") -> np.ndarray:
    """(N, 101, 101) uint8 from uint8 or 0-255 float values (a single (101, 101) tile becomes N=1)."""
    arr = np.asarray(values)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3 or arr.shape[1:] != (TILE, TILE):
        raise SaltError(f"{where}: expected N x {TILE} x {TILE} grayscale tiles, got shape {tuple(arr.shape)}")
    if len(arr) == 0:
        raise SaltError(f"{where}: no tiles")
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype.kind not in "iuf":
        raise SaltError(f"{where}: expected numbers (uint8 or float on the 0-255 scale), got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise SaltError(f"{where}: NaN or infinite values")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0 or hi > 255:
        raise SaltError(f"{where}: values must lie in 0..255 (the PNG's scale), found {lo:g}..{hi:g}")
    if hi <= 1.0 and not np.array_equal(arr, np.round(arr)):
        raise SaltError(f"{where}: values look scaled to 0..1; pass the PNG's 0-255 values (e.g. tiles * 255)")
    return np.round(arr).astype(np.uint8)


def as_list(values: Any, n: int, name: str, kind: type) -> list | None:
    """An optional per-tile parameter (ids, depths, mosaic positions): None when absent or empty, else
    ``n`` values of ``kind``; SaltError naming the parameter otherwise."""
    if values is None:
        return None
    if isinstance(values, str):
        raise SaltError(f"params.{name}: expected a list of {n} values, got a string")
    seq = values.tolist() if isinstance(values, np.ndarray) else list(values)
    if not seq:
        return None
    if len(seq) != n:
        raise SaltError(f"params.{name}: expected {n} values (one per tile), got {len(seq)}")
    try:
        return [kind(v) for v in seq]
    except (TypeError, ValueError) as exc:
        raise SaltError(f"params.{name}: expected {kind.__name__} values ({exc})") from exc
