"""In-memory tile dataset and a seeded DataLoader factory.

Items are unpadded 101x101 tensors: padding to 128 happens model-side (``TileAdapter``), so the
dataset stays cheap and masks/metrics stay on the true tile.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from salt_exp.errors import SaltError
from salt_exp.losses import IGNORE

DEPTH_SCALE = 1000.0  # TGS depths are ~50..960 ft, so z / 1000 lies in [0, 1)
CHANNEL_MODES = {"raw": 1, "depth": 3, "coord": 3}
TILE = 101

PairFn = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def num_channels(channels: str, *, validity: bool = False) -> int:
    """Input planes for a channel mode: raw -> 1; depth, coord -> 3 (tile, plane, tile*plane); ``validity``: one
    more (a context canvas's validity plane)."""
    if channels not in CHANNEL_MODES:
        raise SaltError(f"unknown channels mode {channels!r}; valid: {', '.join(CHANNEL_MODES)}")
    return CHANNEL_MODES[channels] + int(validity)


def input_channels(cfg) -> int:
    """The model's input planes under an experiment config (its channel mode, plus a context validity plane)."""
    return num_channels(cfg.data.channels, validity=cfg.context.mode != "none" and cfg.context.validity)


def _planes(tile: torch.Tensor, depth: float, channels: str) -> torch.Tensor:
    """(H, W) float tile in [0, 1] -> (C, H, W) input planes."""
    if channels == "raw":
        return tile[None]
    if channels == "depth":
        plane = torch.full_like(tile, depth / DEPTH_SCALE)
    else:  # coord: row position, 0 at the top row, 1 at the bottom row (depth grows downwards)
        plane = torch.linspace(0.0, 1.0, tile.shape[0], dtype=tile.dtype)[:, None].expand_as(tile)
    return torch.stack([tile, plane, tile * plane])


class TileDataset(Dataset):
    """Tiles, optional masks and depths in memory; items are dicts of tensors.

    images: (N, H, W) uint8; masks: (N, H, W) uint8 in {0, 1} or None (test set: items then have no
    "mask"), or with :data:`salt_exp.losses.IGNORE` added on pixels the loss skips (2, 3: a pseudo-labelled
    tile's uncertain pixels); depths: (N,) float feet (may be None for ``channels="raw"``); transform: a seeded
    ``(image, mask) -> (image, mask)`` callable applied before the planes are built (so the coord
    plane always describes the output rows). Items:
    ``{"image": float32 (C, H, W) in [0, 1], "mask": float32 (1, H, W) 0/1, "index": int}``.

    Context canvases (:mod:`salt_exp.data.context`): ``images`` are (N, S, S) canvases, ``validity`` their
    (N, S, S) uint8 planes, ``masks`` still (N, 101, 101); the transform (a ``CanvasTransform``) then moves the
    canvas and a packed label plane (the label in the middle + 2 x validity + 4 x the ignore bit) together, the
    item's mask is the middle 101 x 101 again and its image gets the validity as one more plane when
    ``validity_plane``. ``plain``: the same tiles padded alone (N, S, S), given instead of a canvas when the
    transform's ``drop()`` says so (``context.dropout``).
    """

    def __init__(
        self,
        images: np.ndarray,
        masks: np.ndarray | None,
        depths: np.ndarray | None,
        channels: str = "raw",
        *,
        transform: PairFn | None = None,
        validity: np.ndarray | None = None,
        validity_plane: bool = True,
        plain: np.ndarray | None = None,
    ) -> None:
        num_channels(channels)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (N, H, W), got {images.dtype} {images.shape}")
        if validity is not None and (validity.shape != images.shape or validity.dtype != np.uint8):
            raise ValueError(f"validity must be uint8 {images.shape}, got {validity.dtype} {validity.shape}")
        if plain is not None and (validity is None or plain.shape != images.shape or plain.dtype != np.uint8):
            raise ValueError(f"plain canvases must be uint8 {images.shape} beside canvases and their validity")
        tile_shape = (len(images), TILE, TILE) if validity is not None else images.shape
        if masks is not None:
            if masks.shape != tile_shape or masks.dtype != np.uint8:
                raise ValueError(f"masks must be uint8 {tile_shape}, got {masks.dtype} {masks.shape}")
            if masks.size and masks.max() > 1 | IGNORE:
                raise ValueError(f"masks must be 0/1 (+{IGNORE} on ignored pixels), got max {masks.max()} "
                                 "(binarise 0/255 or 0/65535 first)")
        if depths is None and channels != "raw":
            raise SaltError(f"channels={channels!r} needs depths; only 'raw' works without them")
        if depths is not None and np.shape(depths) != (len(images),):
            raise ValueError(f"depths must have shape ({len(images)},), got {np.shape(depths)}")
        self.images, self.masks, self.channels, self.transform = images, masks, channels, transform
        self.validity, self.validity_plane, self.plain = validity, validity_plane, plain
        self.depths = None if depths is None else np.asarray(depths, dtype=np.float64)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.validity is not None:
            return self._canvas_item(index)
        image = self.images[index]
        mask = self.masks[index] if self.masks is not None else np.zeros_like(image)
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        tile = torch.from_numpy(np.ascontiguousarray(image)).float().div_(255.0)
        depth = float(self.depths[index]) if self.depths is not None else 0.0
        item: dict[str, Any] = {"image": _planes(tile, depth, self.channels), "index": int(index)}
        if self.masks is not None:
            item["mask"] = torch.from_numpy(np.ascontiguousarray(mask)).float()[None]
        return item

    def _canvas_item(self, index: int) -> dict[str, Any]:
        canvas, validity, size = self.images[index], self.validity[index], self.images.shape[-1]
        b = (size - TILE) // 2
        drop = getattr(self.transform, "drop", None)
        if self.plain is not None and drop is not None and drop():  # context dropout: the tile padded alone
            canvas, validity = self.plain[index], np.zeros_like(validity)
            validity[b:b + TILE, b:b + TILE] = 1
        packed = validity * np.uint8(2)
        if self.masks is not None:  # the label in bit 0, validity in bit 1, the ignore bit in bit 2
            mask = self.masks[index]
            packed[b:b + TILE, b:b + TILE] |= (mask & 1) | ((mask & IGNORE) << 1)
        if self.transform is not None:
            canvas, packed = self.transform(canvas, packed)
        plane = torch.from_numpy(np.ascontiguousarray(canvas)).float().div_(255.0)
        depth = float(self.depths[index]) if self.depths is not None else 0.0
        planes = _planes(plane, depth, self.channels)
        if self.validity_plane:
            planes = torch.cat([planes, torch.from_numpy(((packed >> 1) & 1).astype(np.float32))[None]])
        item: dict[str, Any] = {"image": planes, "index": int(index)}
        if self.masks is not None:
            inner = packed[b:b + TILE, b:b + TILE]
            item["mask"] = torch.from_numpy(((inner & 1) | ((inner >> 1) & IGNORE)).astype(np.float32))[None]
        return item

    def reseed(self, seed: int) -> None:
        """Reseed the transform's random stream, when it has one."""
        reseed = getattr(self.transform, "reseed", None)
        if callable(reseed):
            reseed(seed)


class MixedSampler(torch.utils.data.Sampler[int]):
    """Indices into a dataset of ``n_first`` tiles followed by ``n_second`` others (a fold's training tiles, then
    its pseudo-labelled ones): each of the ``n_first`` draws of a pass comes from the second block with probability
    ``share``, else from the first (pseudo-labelling's mixed mini-batches, 4th place TGS), so an epoch keeps its
    length. First-block draws walk one permutation (no tile twice in a pass, like ``shuffle=True``), second-block
    draws walk permutations of that block, repeated as needed. A pass is a function of ``seed`` alone."""

    def __init__(self, n_first: int, n_second: int, share: float, *, seed: int) -> None:
        if n_first < 1 or n_second < 0 or not 0.0 <= share <= 1.0:
            raise ValueError(f"MixedSampler needs n_first >= 1, n_second >= 0, share in [0, 1]; got {n_first}, "
                             f"{n_second}, {share}")
        self.n_first, self.n_second, self.seed = n_first, n_second, seed
        self.share = share if n_second else 0.0

    def __len__(self) -> int:
        return self.n_first

    def indices(self) -> np.ndarray:
        """(n_first,) int64: the pass's draws in order (indices >= n_first are second-block tiles)."""
        g = torch.Generator().manual_seed(self.seed)
        second = (torch.rand(self.n_first, generator=g) < self.share).numpy()
        k = int(second.sum())
        order = np.empty(self.n_first, dtype=np.int64)
        order[~second] = torch.randperm(self.n_first, generator=g)[: self.n_first - k].numpy()
        if k:
            rounds = -(-k // self.n_second)  # whole permutations of the second block, enough for k draws
            perms = torch.cat([torch.randperm(self.n_second, generator=g) for _ in range(rounds)])
            order[second] = perms[:k].numpy() + self.n_first
        return order

    def __iter__(self):
        return iter(self.indices().tolist())


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: distinct, reproducible seeds per worker and per epoch.

    PyTorch seeds torch in each worker from the loader's generator (base_seed + worker_id); numpy,
    ``random`` and the augmentation stream (its own generator, copied into every worker) derive from it.
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    info = torch.utils.data.get_worker_info()
    dataset = info.dataset if info is not None else None
    while dataset is not None and not hasattr(dataset, "reseed"):
        dataset = getattr(dataset, "dataset", None)  # unwrap Subset and similar wrappers
    if dataset is not None:
        dataset.reseed(seed)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    workers: int,
    *,
    seed: int,
    drop_last: bool = False,
    pin_memory: bool = False,
    sampler: torch.utils.data.Sampler | None = None,
) -> DataLoader:
    """A DataLoader whose order and worker seeds come from ``torch.Generator().manual_seed(seed)``.

    Workers are not persistent, so each epoch draws fresh worker seeds from the generator:
    augmentations differ between epochs yet the whole run replays from ``seed``. ``sampler`` (then
    ``shuffle`` is ignored) sets the order instead; it seeds itself (e.g. :class:`MixedSampler`).
    """
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=workers,
        drop_last=drop_last,
        pin_memory=pin_memory,
        worker_init_fn=seed_worker,
        generator=generator,
        persistent_workers=False,
    )
