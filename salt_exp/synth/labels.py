"""Tile labels derived from a section's true salt geometry with the real TGS annotation logic.

The real masks were drawn at section (mosaic) scale and only make full sense there:

- salt is labelled as a *cap*: once a tile's true last row is entirely salt, every tile below it in
  the same tile column is labelled empty;
- a tile wholly inside salt is labelled empty, so no mask covers 100% of its tile;
- near-vertical boundaries are drawn as straight vertical lines that continue downwards across tile
  borders: when the true boundary in a tile's bottom ``VERTICAL_ROWS`` rows barely moves, the label
  there repeats the last row, and the tiles below repeat it too for as long as it still matches
  the true salt of the tile (IoU >= ``CONTINUE_IOU``).
"""

from __future__ import annotations

import numpy as np

TILE = 101
VERTICAL_ROWS = 30  # the same window the reference post-processing uses to call a boundary near-vertical
VERTICAL_TOLERANCE = 3  # pixels of the last row that may change over that window
CONTINUE_IOU = 0.7  # a continued vertical line stops once the true tile agrees with it less than this


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 0.0


def _is_near_vertical(truth: np.ndarray) -> bool:
    """The boundary in the bottom rows barely moves, and the last row is neither empty nor full."""
    last = truth[-1]
    if not last.any() or last.all():
        return False
    window = truth[-VERTICAL_ROWS:]
    return np.count_nonzero(window != last[None, :]) <= VERTICAL_TOLERANCE * VERTICAL_ROWS


def _label_column(truth_tiles: list[np.ndarray]) -> list[np.ndarray]:
    """Labels for one tile column, top to bottom; ``truth_tiles`` are (101, 101) bool."""
    labels: list[np.ndarray] = []
    capped = False
    vertical: np.ndarray | None = None  # the last row being continued downwards, if any
    for truth in truth_tiles:
        label = np.zeros_like(truth)
        if vertical is not None and _iou(truth, np.broadcast_to(vertical, truth.shape)) < CONTINUE_IOU:
            vertical = None
        if capped:
            vertical = None
        elif vertical is not None:
            label[:] = vertical[None, :]
        else:
            label = truth.copy()
            if _is_near_vertical(truth):
                label[-VERTICAL_ROWS:] = truth[-1][None, :]
                vertical = truth[-1].copy()
        if label.all():
            label[:] = False
        capped = capped or bool(truth[-1].all())
        labels.append(label)
    return labels


def annotate(salt: np.ndarray) -> np.ndarray:
    """Labels of every tile of a section: (rows, cols, 101, 101) bool from a (rows*101, cols*101) mask."""
    rows, cols = salt.shape[0] // TILE, salt.shape[1] // TILE
    tiles = salt[: rows * TILE, : cols * TILE].reshape(rows, TILE, cols, TILE).transpose(0, 2, 1, 3)
    out = np.zeros_like(tiles)
    for c in range(cols):
        for r, label in enumerate(_label_column([tiles[r, c] for r in range(rows)])):
            out[r, c] = label
    return out


def cut_tiles(image: np.ndarray) -> np.ndarray:
    """Cut a (rows*101, cols*101) image into (rows, cols, 101, 101) tiles."""
    rows, cols = image.shape[0] // TILE, image.shape[1] // TILE
    return image[: rows * TILE, : cols * TILE].reshape(rows, TILE, cols, TILE).transpose(0, 2, 1, 3).copy()
