"""Training augmentations (albumentations 2), applied jointly to a 101x101 tile and its mask.

The reference pipeline's augmentations (an 11th-place TGS solution): random invert, random gamma, cutout, random fixed-size crop
resized back to the tile size, horizontal flip. There is deliberately no vertical flip: depth has a
direction (salt caps lie above empty tiles). Brightness/contrast and shift-scale-rotate are extra
options, off by default. Validation and test use the identity.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace

import albumentations as A
import cv2
import numpy as np

from salt_exp.config import AugmentConfig

TILE = 101

PairFn = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


class PairTransform:
    """Seeded callable ``(image uint8 (H, W), mask uint8 (H, W)) -> (image, mask)``.

    Geometric transforms move image and mask together (mask resampled with nearest neighbour);
    pixel transforms and cutout touch the image only.
    """

    def __init__(self, compose: A.Compose, seed: int) -> None:
        self._compose = compose
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        """Restart the random stream (``seed_worker`` calls this in every DataLoader worker).

        Why not ``A.Compose(..., seed=seed)``: albumentations 2.0.8 gives every child transform its own
        ``Random(seed)``, identical streams, so all coin flips with equal p fire together. One shared
        generator pair keeps the transforms independent.
        """
        self._compose.set_random_state(np.random.default_rng(seed), random.Random(seed))

    @property
    def transforms(self) -> list[A.BasicTransform]:
        return list(self._compose.transforms)

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if image.ndim != 2 or image.dtype != np.uint8 or mask.shape != image.shape:
            raise ValueError(
                f"expected a uint8 (H, W) image and a mask of the same shape, got {image.dtype} {image.shape}"
                f" and {mask.dtype} {mask.shape}"
            )
        out = self._compose(image=image, mask=mask)
        return np.ascontiguousarray(out["image"]), np.ascontiguousarray(out["mask"])


def _augmentations(cfg: AugmentConfig, tile_size: int) -> list[A.BasicTransform]:
    """The configured transforms in application order; those with probability 0 are left out."""
    gamma_pct = (cfg.gamma_limit[0] * 100.0, cfg.gamma_limit[1] * 100.0)  # albumentations: gamma = value / 100
    hole = (cfg.cutout_size, cfg.cutout_size)
    candidates = [
        (cfg.invert, lambda p: A.InvertImg(p=p)),
        (cfg.gamma, lambda p: A.RandomGamma(gamma_limit=gamma_pct, p=p)),
        (
            cfg.brightness_contrast,
            lambda p: A.RandomBrightnessContrast(
                brightness_limit=cfg.brightness_limit, contrast_limit=cfg.contrast_limit, p=p
            ),
        ),
        (
            cfg.cutout,  # image only: fill_mask=None leaves the mask untouched
            lambda p: A.CoarseDropout(
                num_holes_range=(cfg.cutout_holes, cfg.cutout_holes),
                hole_height_range=hole,
                hole_width_range=hole,
                fill=0,
                fill_mask=None,
                p=p,
            ),
        ),
        (
            cfg.shift_scale_rotate,
            lambda p: A.Affine(
                translate_percent=(-cfg.shift_limit, cfg.shift_limit),
                scale=(1.0 - cfg.scale_limit, 1.0 + cfg.scale_limit),
                rotate=(-cfg.rotate_limit, cfg.rotate_limit),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                border_mode=cv2.BORDER_REPLICATE,
                p=p,
            ),
        ),
        (
            cfg.crop,
            lambda p: A.RandomSizedCrop(
                min_max_height=(cfg.crop_size, cfg.crop_size),
                size=(tile_size, tile_size),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                p=p,
            ),
        ),
        (cfg.hflip, lambda p: A.HorizontalFlip(p=p)),
    ]
    return [make(prob) for prob, make in candidates if prob > 0.0]


def build_train_transform(augment_cfg: AugmentConfig, seed: int, *, tile_size: int = 101,
                          canvas: int | None = None, context_dropout: float = 0.0) -> PairTransform | CanvasTransform:
    """Seeded training augmentation for ``tile_size`` x ``tile_size`` uint8 tiles and 0/1 masks; with ``canvas``
    (context canvases of that size, :mod:`salt_exp.data.context`) a :class:`CanvasTransform` instead, which also
    draws whether a sample goes without its neighbours (``context_dropout``).

    The same ``seed`` and the same sequence of calls give the same outputs.
    """
    if augment_cfg.crop > 0.0 and augment_cfg.crop_size > tile_size:
        raise ValueError(f"crop_size {augment_cfg.crop_size} exceeds the tile size {tile_size}")
    if canvas is not None:
        return CanvasTransform(augment_cfg, seed, canvas, dropout=context_dropout)
    return PairTransform(A.Compose(_augmentations(augment_cfg, tile_size), p=1.0), seed)


class CanvasTransform:
    """The training augmentation of a context canvas (S, S) and its packed label plane (S, S) uint8 (the tile's label
    in the middle, plus 2 x validity, plus 4 x the loss's ignore bit), so that the tile and its neighbours move
    together.

    Pixel transforms and cutout act on the whole canvas (as on a tile). The fixed-size crop zooms by
    101 / ``crop_size`` about a point chosen so that the output's centre 101 x 101 comes from inside the tile
    (its labels are known; the neighbours' are not), with the same freedom of position a tile's crop has. The
    h-flip turns the canvas about the tile's centre column (:func:`salt_exp.data.context.hflip_canvas`).
    Shift-scale-rotate is refused by the config check (it would move unlabelled pixels into the tile).
    ``dropout``: :meth:`drop` says, with that probability, that the dataset gives this sample without its neighbours
    (``context.dropout``; drawn from a stream of its own, so the other draws are the same with or without it).
    """

    def __init__(self, cfg: AugmentConfig, seed: int, size: int, *, dropout: float = 0.0) -> None:
        pixel = [t for t in _augmentations(replace(cfg, crop=0.0, hflip=0.0, shift_scale_rotate=0.0), TILE)]
        self._pixel = A.Compose(pixel, p=1.0)
        self.cfg, self.size, self.dropout = cfg, size, dropout
        self.before = (size - TILE) // 2
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        self._pixel.set_random_state(np.random.default_rng(seed), random.Random(seed))
        self._rng = np.random.default_rng([seed, 1])  # the geometric draws: a stream of their own
        self._drop_rng = np.random.default_rng([seed, 2])  # context dropout: another

    def drop(self) -> bool:
        """Whether the next sample goes without its neighbours (never drawn at ``dropout`` 0)."""
        return self.dropout > 0.0 and bool(self._drop_rng.random() < self.dropout)

    @property
    def transforms(self) -> list[A.BasicTransform]:
        return list(self._pixel.transforms)

    def crop_window(self) -> tuple[int, int, int]:
        """(top, left, width) of the crop's window on the canvas."""
        s, b = self.size, self.before
        width = int(round(s * self.cfg.crop_size / TILE))
        zoom = width / s
        lo, hi = b - b * zoom, b + TILE - (b + TILE) * zoom  # the window's corner keeps the output centre in the tile
        first, last = int(np.ceil(lo)), int(np.floor(hi))
        if last < first:
            first = last = int(round(lo))
        top, left = (int(v) for v in self._rng.integers(first, last + 1, size=2))
        return top, left, width

    def __call__(self, image: np.ndarray, packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from salt_exp.data.context import hflip_canvas

        if image.shape != (self.size, self.size) or packed.shape != image.shape or image.dtype != np.uint8:
            raise ValueError(f"expected uint8 ({self.size}, {self.size}) canvas and label plane, got {image.dtype} "
                             f"{image.shape} and {packed.shape}")
        if self._pixel.transforms:
            image = self._pixel(image=image, mask=packed)["image"]
        cfg = self.cfg
        if cfg.crop > 0.0 and self._rng.random() < cfg.crop:
            top, left, width = self.crop_window()
            window = (slice(top, top + width), slice(left, left + width))
            image = cv2.resize(image[window], (self.size, self.size), interpolation=cv2.INTER_LINEAR)
            packed = cv2.resize(packed[window], (self.size, self.size), interpolation=cv2.INTER_NEAREST)
        if cfg.hflip > 0.0 and self._rng.random() < cfg.hflip:
            image = hflip_canvas(image)
            packed = hflip_canvas(packed)
            shift = self.size - TILE - 2 * self.before
            if shift:
                packed[:, -shift:] &= 1  # the invented outermost column holds no real pixel
        return np.ascontiguousarray(image), np.ascontiguousarray(packed)


def identity_transform(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validation/test transform: returns its inputs unchanged."""
    return image, mask


def build_eval_transform() -> PairFn:
    """The validation transform: the identity (TTA lives in the ensemble layer, not here)."""
    return identity_transform
