"""Tile adaptation 101 -> size (128 by default) with an exact inverse.

Modes: ``replicate`` (default), ``reflect``, ``reflect_replicate`` (reflect horizontally, replicate
vertically: depth has a direction, so mirroring rows would invent geology), ``zero``, ``biharmonic``
(skimage.restoration.inpaint_biharmonic of the border) and ``resize`` (bilinear). Padding puts
``(size - 101) // 2`` pixels before and the rest after (13 / 14 for 128), as in the reference.
For every mode except ``resize``, ``crop(pad(x)) == x`` exactly; ``resize`` crops by resizing back.

Biharmonic inpainting is slow (~0.1 s a tile): pad a whole dataset once with :func:`pad_array`
(optionally cached on disk by content hash); :class:`TileAdapter` keeps an in-memory per-tile cache.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from salt_exp.errors import SaltError

TILE = 101
PAD_MODES = ("replicate", "reflect", "reflect_replicate", "zero", "biharmonic", "resize")


def _check_mode(mode: str) -> None:
    if mode not in PAD_MODES:
        raise SaltError(f"unknown padding mode {mode!r}; valid: {', '.join(PAD_MODES)}")


def pad_offsets(size: int = 128, tile: int = TILE) -> tuple[int, int]:
    """(before, after) padding per axis: 13, 14 for 101 -> 128."""
    if size < tile:
        raise SaltError(f"padded size must be >= {tile}, got {size}")
    before = (size - tile) // 2
    return before, size - tile - before


def _biharmonic_tile(tile: np.ndarray, size: int) -> np.ndarray:
    """(101, 101) -> (size, size) float64: the border inpainted, the inside copied exactly."""
    from skimage.restoration import inpaint_biharmonic

    before, _ = pad_offsets(size, tile.shape[0])
    canvas = np.pad(tile.astype(np.float64), [(before, size - tile.shape[0] - before)] * 2, mode="edge")
    mask = np.ones((size, size), dtype=bool)
    inside = (slice(before, before + tile.shape[0]), slice(before, before + tile.shape[1]))
    mask[inside] = False
    out = inpaint_biharmonic(canvas, mask)
    out[inside] = tile  # the solver leaves known pixels alone; make exactness independent of that
    return out


def _pad_numpy(images: np.ndarray, mode: str, size: int) -> np.ndarray:
    if mode == "biharmonic":
        return np.stack([_biharmonic_tile(img, size) for img in images]).astype(np.float32)
    padded = TileAdapter(mode, size).pad(torch.from_numpy(images.astype(np.float32))[:, None])
    return padded[:, 0].numpy()


def pad_array(images: np.ndarray, mode: str, size: int = 128, cache_dir: str | Path | None = None) -> np.ndarray:
    """Pad a dataset of tiles: (N, 101, 101) uint8 or float -> (N, size, size) float32.

    Values keep their range (uint8 0..255 stays 0..255). With ``cache_dir`` the result is stored as
    ``pad-<mode>-<size>-<sha1 of the input>.npy`` and reused on the next call with the same input.
    """
    _check_mode(mode)
    images = np.asarray(images)
    if images.ndim != 3:
        raise SaltError(f"pad_array expects (N, H, W) tiles, got shape {images.shape}")
    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f"pad-{mode}-{size}-{content_hash(images)}.npy"
        if cache_file.is_file():
            return np.load(cache_file)
    out = _pad_numpy(images, mode, size)
    if cache_file is not None:
        from salt_exp.io import atomic_path

        with atomic_path(cache_file) as tmp, open(tmp, "wb") as fh:
            np.save(fh, out)
    return out


def content_hash(array: np.ndarray) -> str:
    """sha1 of an array's dtype, shape and bytes."""
    digest = hashlib.sha1(f"{array.dtype}{array.shape}".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


class TileAdapter:
    """``pad``: (B, C, 101, 101) -> (B, C, size, size); ``crop``: (B, C, size, size) -> (B, C, 101, 101).

    ``crop`` works on images and on logits alike; for ``resize`` it resizes bilinearly back down.
    """

    def __init__(self, mode: str = "replicate", size: int = 128, cache_items: int = 20000) -> None:
        _check_mode(mode)
        self.mode, self.size = mode, size
        # resize may also shrink (e.g. 64 px for fast smoke runs); the other modes pad around the tile
        self.before, self.after = (0, 0) if mode == "resize" else pad_offsets(size)
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()  # biharmonic tiles by content hash
        self._cache_items = cache_items

    def is_canvas(self, x: torch.Tensor) -> bool:
        """``x`` is already (B, C, size, size): a context canvas, its padding filled (salt_exp.data.context)."""
        return self.mode != "resize" and x.ndim == 4 and tuple(x.shape[-2:]) == (self.size, self.size)

    def hflip(self, x: torch.Tensor) -> torch.Tensor:
        """The left-right flip of (B, C, 101, 101) tiles, or of canvases about their tile's centre column."""
        if self.is_canvas(x):
            from salt_exp.data.context import hflip_canvas

            return hflip_canvas(x)
        return torch.flip(x, dims=[3])

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_canvas(x):
            return x
        self._check(x, TILE)
        b, a = self.before, self.after
        if self.mode == "resize":
            return F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        if self.mode == "zero":
            return F.pad(x, (b, a, b, a), mode="constant", value=0.0)
        if self.mode == "reflect_replicate":
            return F.pad(F.pad(x, (b, a, 0, 0), mode="reflect"), (0, 0, b, a), mode="replicate")
        if self.mode == "biharmonic":
            return self._pad_biharmonic(x)
        return F.pad(x, (b, a, b, a), mode=self.mode)

    def crop(self, y: torch.Tensor) -> torch.Tensor:
        self._check(y, self.size)
        if self.mode == "resize":
            return F.interpolate(y, size=(TILE, TILE), mode="bilinear", align_corners=False)
        return y[..., self.before : self.before + TILE, self.before : self.before + TILE]

    def _check(self, x: torch.Tensor, side: int) -> None:
        if x.ndim != 4 or tuple(x.shape[-2:]) != (side, side):
            raise SaltError(f"expected a (B, C, {side}, {side}) tensor, got {tuple(x.shape)}")

    def _pad_biharmonic(self, x: torch.Tensor) -> torch.Tensor:
        tiles = x.detach().to("cpu", torch.float64).numpy()
        out = np.empty(tiles.shape[:2] + (self.size, self.size), dtype=np.float64)
        for i, j in np.ndindex(*tiles.shape[:2]):
            key = content_hash(tiles[i, j])
            if key not in self._cache:
                self._cache[key] = _biharmonic_tile(tiles[i, j], self.size)
                if len(self._cache) > self._cache_items:
                    self._cache.popitem(last=False)
            out[i, j] = self._cache[key]
        return torch.from_numpy(out).to(device=x.device, dtype=x.dtype)
