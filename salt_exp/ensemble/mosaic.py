"""Tile positions inside reassembled mosaics, with O(1) neighbour lookups.

A mosaic table has columns ``id, x, y, mosaic_id`` (x the column, y the row), as in ``mosaics.csv``
or the output of :func:`salt_exp.ensemble.jigsaw.solve_jigsaw`.

Duplicate positions: the real reconstruction puts two tiles at a few positions (near-identical tiles).
The *first* row of the table owns such a position: neighbour lookups from the surrounding tiles, the
column iterators and :meth:`MosaicIndex.assemble` see only that tile. The later tile keeps its own
position, so its lookups (``above(dup)`` ...) still work, but no other tile points at it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from salt_exp.errors import SaltError

TILE = 101
Position = tuple[int, int, int]  # (mosaic_id, x, y)


@dataclass(frozen=True)
class MosaicIndex:
    """Positions of tiles in mosaics: ``id -> (mosaic_id, x, y)`` and its inverse (first tile wins)."""

    position: dict[str, Position]
    tile_at: dict[Position, str]
    bounds: dict[int, tuple[int, int, int, int]]  # mosaic_id -> (x_min, y_min, x_max, y_max)

    @classmethod
    def from_frame(cls, df: pd.DataFrame) -> MosaicIndex:
        """Build from a table with columns id, x, y, mosaic_id; a duplicate *id* is a SaltError."""
        missing = [c for c in ("id", "x", "y", "mosaic_id") if c not in df.columns]
        if missing:
            raise SaltError(f"mosaic table lacks column(s) {missing}; expected id, x, y, mosaic_id")
        ids = df["id"].astype(str).tolist()
        dup = df["id"].astype(str)[df["id"].astype(str).duplicated()]
        if len(dup):
            raise SaltError(f"mosaic table lists id {dup.iloc[0]} twice")
        cols = [df[c].astype(np.int64).tolist() for c in ("mosaic_id", "x", "y")]
        position = {i: (m, x, y) for i, m, x, y in zip(ids, *cols, strict=True)}
        tile_at: dict[Position, str] = {}
        for i, pos in position.items():
            tile_at.setdefault(pos, i)  # the first tile listed keeps a shared position
        bounds: dict[int, tuple[int, int, int, int]] = {}
        for m, x, y in tile_at:
            b = bounds.get(m, (x, y, x, y))
            bounds[m] = (min(b[0], x), min(b[1], y), max(b[2], x), max(b[3], y))
        return cls(position, tile_at, bounds)

    def __contains__(self, tile_id: object) -> bool:
        return tile_id in self.position

    def __len__(self) -> int:
        return len(self.position)

    def _step(self, tile_id: str, dx: int, dy: int) -> str | None:
        pos = self.position.get(tile_id)
        if pos is None:
            return None
        return self.tile_at.get((pos[0], pos[1] + dx, pos[2] + dy))

    def above(self, tile_id: str) -> str | None:
        """The tile directly above (row y-1), or None."""
        return self._step(tile_id, 0, -1)

    def below(self, tile_id: str) -> str | None:
        """The tile directly below (row y+1), or None."""
        return self._step(tile_id, 0, 1)

    def left(self, tile_id: str) -> str | None:
        """The tile directly left (column x-1), or None."""
        return self._step(tile_id, -1, 0)

    def right(self, tile_id: str) -> str | None:
        """The tile directly right (column x+1), or None."""
        return self._step(tile_id, 1, 0)

    def column_below(self, tile_id: str, *, skip_gaps: bool = False) -> Iterator[str]:
        """Tiles below ``tile_id`` in its mosaic column, top to bottom.

        Stops at the first missing position unless ``skip_gaps``, which walks to the mosaic bottom.
        """
        if tile_id not in self.position:
            return
        m, x, y = self.position[tile_id]
        bottom = self.bounds[m][3] if skip_gaps else None
        while True:
            y += 1
            below = self.tile_at.get((m, x, y))
            if below is not None:
                yield below
            elif not skip_gaps or y >= bottom:
                return

    def columns(self) -> Iterator[list[str]]:
        """Every maximal run of vertically contiguous tiles, each listed top to bottom."""
        for (m, x, y), tile_id in sorted(self.tile_at.items()):
            if (m, x, y - 1) not in self.tile_at:
                yield [tile_id, *self.column_below(tile_id)]

    @property
    def mosaic_ids(self) -> list[int]:
        return sorted(self.bounds)


    def shape(self, mosaic_id: int) -> tuple[int, int]:
        """(rows, columns) of a mosaic in tiles."""
        if mosaic_id not in self.bounds:
            raise SaltError(f"unknown mosaic_id {mosaic_id}; there are {len(self.bounds)} mosaics")
        x0, y0, x1, y1 = self.bounds[mosaic_id]
        return y1 - y0 + 1, x1 - x0 + 1

    def assemble(self, mosaic_id: int, tiles: Mapping[str, np.ndarray], fill: float = np.nan) -> np.ndarray:
        """One mosaic as an image: (rows*101, cols*101); positions without a tile in ``tiles`` get ``fill``.

        The dtype is that of the tiles promoted with ``fill`` (float for the default NaN; pass
        ``fill=0`` to keep uint8 images or 0/1 masks as they are).
        """
        rows, cols = self.shape(mosaic_id)
        x0, y0 = self.bounds[mosaic_id][:2]
        placed = [(pos, tiles[i]) for pos, i in self.tile_at.items() if pos[0] == mosaic_id and i in tiles]
        size = placed[0][1].shape[0] if placed else TILE
        base = placed[0][1].dtype if placed else np.dtype(np.float32)
        dtype = np.result_type(base, np.float32 if np.isnan(fill) else np.min_scalar_type(fill))
        out = np.full((rows * size, cols * size), fill, dtype=dtype)
        for (_, x, y), tile in placed:
            r, c = (y - y0) * size, (x - x0) * size
            out[r:r + size, c:c + size] = tile
        return out
