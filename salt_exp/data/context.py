"""Mosaic context canvases (``context.mode: image``): each tile in the middle of a ``padding.size`` canvas whose
padding holds the neighbouring tiles' pixels where the mosaic table places a neighbour, padded as usual elsewhere.

A canvas is (S, S) uint8 with the tile at rows and columns ``before .. before + 101`` (13 .. 114 for 128, as the
plain padding puts it), and a validity plane (S, S) uint8: 1 on real pixels (the tile, its neighbours' pixels),
0 on padding. Only images travel into a canvas, never a mask: the neighbours are train or test tiles alike.

Leakage: ``exclude`` names tiles treated as absent. A fold's training canvases exclude its validation tiles and its
validation canvases exclude its training tiles, so a neighbour across the fold split is never seen (under the
``mosaic`` folds scheme a mosaic's train tiles share one fold and nothing is excluded; under the others the
exclusion is what keeps a validation tile's pixels out of training and a training tile's out of validation).

Flips: S - 101 is odd for the usual sizes (27 for 128), so a plain left-right flip of the canvas would move the
tile one column off its place. :func:`hflip_canvas` flips about the tile's centre column instead: the outermost
column on the far side has no source and repeats its neighbour (its validity set to 0).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from salt_exp.data.padding import TILE, TileAdapter, pad_offsets
from salt_exp.ensemble.mosaic import MosaicIndex
from salt_exp.errors import SaltError

MAX_CANVAS = 3 * TILE  # the 8 neighbours reach at most one tile out


class ContextPool:
    """The tile images a canvas may borrow from (train and test tiles, by id) and where the mosaic table puts
    them. ``frame``: the mosaic table (id, x, y, mosaic_id; x the column, y the row) or None (no neighbours)."""

    def __init__(self, ids: Sequence[str], images: np.ndarray, frame: pd.DataFrame | None) -> None:
        ids = [str(i) for i in ids]
        if len(ids) != len(images):
            raise SaltError(f"context pool: {len(ids)} ids for {len(images)} images")
        self.row = {tid: i for i, tid in enumerate(ids)}
        self.images = np.asarray(images, dtype=np.uint8)
        # positions as the mosaic rules read them (MosaicIndex: the first tile listed owns a shared position)
        index = MosaicIndex.from_frame(frame) if frame is not None else None
        self.position = index.position if index is not None else {}
        self.tile_at = index.tile_at if index is not None else {}

    @classmethod
    def from_data(cls, data) -> ContextPool:
        """Every train and test tile of a :class:`salt_exp.data.kaggle.KaggleData`, placed by its mosaics.csv."""
        sets = [s for s in (data.train, data.test) if s is not None]
        return cls(np.concatenate([s.ids for s in sets]).tolist(), np.concatenate([s.images for s in sets]), data.mosaics)

    def neighbours(self, tile_id: str, exclude: Collection[str] = ()) -> dict[tuple[int, int], str]:
        """(dy, dx) -> neighbour id for the up to 8 placed neighbours with an image, ``exclude`` left out."""
        pos = self.position.get(str(tile_id))
        if pos is None:
            return {}
        m, x, y = pos
        out = {}
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                other = self.tile_at.get((m, x + dx, y + dy))
                if (dy or dx) and other is not None and other != tile_id and other in self.row and other not in exclude:
                    out[(dy, dx)] = other
        return out

    def canvases(self, ids: Sequence[str], images: np.ndarray, *, size: int, pad_mode: str,
                 exclude: Collection[str] = (),
                 alone: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(N, size, size) uint8 canvases of ``images`` (N, 101, 101) uint8, tile ``ids[i]``'s neighbours in the
        padding, and their (N, size, size) uint8 validity planes. A tile the table does not place (or an id not in
        the pool) is padded alone. ``exclude``: ids treated as absent (the other side of a fold split). ``alone``:
        :func:`padded_alone` of the same images, when the caller has it (copied, not padded again)."""
        images = np.asarray(images)
        if images.ndim != 3 or images.shape[1:] != (TILE, TILE) or len(ids) != len(images):
            raise SaltError(f"context canvases need (N, {TILE}, {TILE}) tiles and N ids, got {images.shape} and "
                            f"{len(ids)} ids")
        if not TILE <= size <= MAX_CANVAS:
            raise SaltError(f"context canvas size must be between {TILE} and {MAX_CANVAS} (padding.size), got {size}")
        before, _ = pad_offsets(size)
        exclude = set(map(str, exclude))
        canvas, valid = (alone[0].copy(), alone[1].copy()) if alone is not None else padded_alone(images, size, pad_mode)
        lo = TILE - before  # the canvas window inside the 3 x 3 block of tiles
        for i, tid in enumerate(ids):
            for (dy, dx), other in self.neighbours(str(tid), exclude).items():
                # the neighbour's block in 3 x 3 coordinates, intersected with the window [lo, lo + size)
                r0, c0 = (dy + 1) * TILE, (dx + 1) * TILE
                rs, re = max(r0, lo), min(r0 + TILE, lo + size)
                cs, ce = max(c0, lo), min(c0 + TILE, lo + size)
                if rs >= re or cs >= ce:
                    continue
                src = self.images[self.row[other]]
                canvas[i, rs - lo:re - lo, cs - lo:ce - lo] = src[rs - r0:re - r0, cs - c0:ce - c0]
                valid[i, rs - lo:re - lo, cs - lo:ce - lo] = 1
        return canvas, valid

    def linked(self, ids: Sequence[str], exclude: Collection[str] = ()) -> int:
        """How many of ``ids`` have at least one neighbour in a canvas (for the run's params and log line)."""
        exclude = set(map(str, exclude))
        return sum(bool(self.neighbours(str(t), exclude)) for t in ids)


def padded_alone(images: np.ndarray, size: int, pad_mode: str) -> tuple[np.ndarray, np.ndarray]:
    """(N, size, size) uint8 canvases of (N, 101, 101) uint8 tiles padded as the plain model pads them (no
    neighbour), the tile's own pixels exact, and their validity planes (1 on the tile only)."""
    before, _ = pad_offsets(size)
    padded = TileAdapter(pad_mode, size).pad(torch.from_numpy(np.asarray(images, np.float32))[:, None])[:, 0].numpy()
    canvas = np.clip(np.rint(padded), 0, 255).astype(np.uint8)
    canvas[:, before:before + TILE, before:before + TILE] = images  # exact, whatever the padding did
    valid = np.zeros(canvas.shape, dtype=np.uint8)
    valid[:, before:before + TILE, before:before + TILE] = 1
    return canvas, valid


def hflip_canvas(x: np.ndarray | torch.Tensor, *, valid_plane: bool = False):
    """Left-right flip about the tile's centre column of (..., S, S) canvases (S - 101 odd: see the module
    docstring). ``valid_plane``: ``x`` is a validity plane, whose invented outermost column is set to 0."""
    size = x.shape[-1]
    before, after = pad_offsets(size)
    shift = after - before  # 1 for 128: the flipped tile would start one column late
    if isinstance(x, torch.Tensor):
        flipped = torch.flip(x, dims=[-1])
        if shift:
            flipped = torch.cat([flipped[..., shift:], flipped[..., -1:].expand(*flipped.shape[:-1], shift)], dim=-1)
            if valid_plane:
                flipped[..., -shift:] = 0
        return flipped
    flipped = x[..., ::-1]
    if shift:
        flipped = np.concatenate([flipped[..., shift:], np.repeat(flipped[..., -1:], shift, axis=-1)], axis=-1)
        if valid_plane:
            flipped[..., -shift:] = 0
    return np.ascontiguousarray(flipped)


@dataclass(frozen=True)
class TileContext:
    """What a prediction call knows about its tiles' surroundings: the pool of neighbour images, the tiles' ids
    (in the order of the images predicted) and the ids to treat as absent."""

    pool: ContextPool
    ids: Sequence[str]
    exclude: Collection[str] = ()

    @classmethod
    def of_data(cls, data, ids: Sequence[str], exclude: Collection[str] = ()) -> TileContext:
        return cls(ContextPool.from_data(data), [str(i) for i in ids], exclude)


def model_inputs(cfg, images: np.ndarray, context: TileContext | None) -> tuple[np.ndarray, np.ndarray | None]:
    """What a snapshot of config ``cfg`` reads for uint8 tiles (N, 101, 101): the tiles themselves (plain models,
    validity None), or their context canvases and validity planes. Without ``context`` a context model sees every
    tile padded alone (the validity plane says so), as it saw tiles outside any mosaic in training."""
    if cfg.context.mode == "none":
        return images, None
    if context is None:
        context = TileContext(ContextPool([], np.zeros((0, TILE, TILE), np.uint8), None), [""] * len(images))
    if len(context.ids) != len(images):
        raise SaltError(f"context: {len(context.ids)} tile ids for {len(images)} images")
    return context.pool.canvases(context.ids, images, size=cfg.padding.size, pad_mode=cfg.padding.mode,
                                 exclude=context.exclude)
