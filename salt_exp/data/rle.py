"""Kaggle run-length encoding for the TGS competition.

Pixels are numbered column-major (top to bottom, then left to right) starting at 1;
an encoding is space-separated ``start length`` pairs; an empty mask is the empty string.
"""

from __future__ import annotations

import numpy as np

from salt_exp.errors import SaltError


def rle_encode(mask: np.ndarray) -> str:
    """Encode a 2-D mask (nonzero = salt) as a Kaggle RLE string."""
    if mask.ndim != 2:
        raise ValueError(f"rle_encode expects a 2-D mask, got shape {mask.shape}")
    flat = (np.asarray(mask).T.reshape(-1) != 0).astype(np.int8)
    padded = np.concatenate([[0], flat, [0]])
    edges = np.flatnonzero(padded[1:] != padded[:-1]) + 1
    starts, ends = edges[0::2], edges[1::2]
    pairs = np.empty(2 * len(starts), dtype=np.int64)
    pairs[0::2] = starts
    pairs[1::2] = ends - starts
    return " ".join(map(str, pairs.tolist()))


def rle_decode(rle: str | float | None, shape: tuple[int, int] = (101, 101), *, where: str = "rle") -> np.ndarray:
    """Decode a Kaggle RLE string into a uint8 0/1 mask of ``shape`` (rows, cols).

    ``where`` names the field in error messages (e.g. ``"train.csv id=abc rle_mask"``).
    Missing values (None, NaN, empty string) decode to an empty mask.
    """
    height, width = shape
    out = np.zeros(height * width, dtype=np.uint8)
    if rle is None or (isinstance(rle, float) and np.isnan(rle)):
        return out.reshape(width, height).T
    text = str(rle).strip()
    if not text:
        return out.reshape(width, height).T
    try:
        values = np.array(text.split(), dtype=np.int64)
    except (ValueError, OverflowError):  # OverflowError: an integer beyond int64
        raise SaltError(f"{where}: malformed RLE (expected integers 'start length ...'), got {text[:40]!r}") from None
    if len(values) % 2:
        raise SaltError(f"{where}: malformed RLE, odd number of values ({len(values)})")
    starts, lengths, pixels = values[0::2] - 1, values[1::2], height * width
    # compared without adding start + length first: int64 sums of huge values wrap around
    bad = np.flatnonzero((starts < 0) | (starts >= pixels) | (lengths <= 0) | (lengths > pixels - starts))
    if len(bad):
        raise SaltError(f"{where}: malformed RLE, runs must be 1-indexed with positive lengths within {height}x{width} "
                        f"({pixels} pixels), got run '{values[2 * bad[0]]} {lengths[bad[0]]}'")
    ends = starts + lengths
    bad = np.flatnonzero(starts[1:] < ends[:-1])
    if len(bad):
        k = bad[0]
        raise SaltError(f"{where}: malformed RLE, runs must be sorted and non-overlapping, got run "
                        f"'{values[2 * k + 2]} {lengths[k + 1]}' after '{values[2 * k]} {lengths[k]}'")
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        out[s:e] = 1
    return out.reshape(width, height).T
