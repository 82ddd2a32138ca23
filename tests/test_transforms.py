"""Training augmentations and the tile dataset / loader."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch.utils.data import Subset

from salt_exp.config import AugmentConfig
from salt_exp.data.dataset import DEPTH_SCALE, TileDataset, make_loader, num_channels
from salt_exp.data.transforms import build_eval_transform, build_train_transform
from salt_exp.errors import SaltError

OFF = AugmentConfig(hflip=0.0, invert=0.0, gamma=0.0, cutout=0.0, crop=0.0)


def only(**probs: float) -> AugmentConfig:
    return dataclasses.replace(OFF, **probs)


def blocks(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 0/1 mask of 10x10 blocks and an image that is a two-level copy of it (30 / 230)."""
    rng = np.random.default_rng(seed)
    mask = np.kron(rng.integers(0, 2, (11, 11)), np.ones((10, 10)))[:101, :101].astype(np.uint8)
    return (30 + 200 * mask).astype(np.uint8), mask


def test_same_seed_same_stream_different_seed_differs():
    image, mask = blocks()
    runs = []
    for seed in (3, 3, 4):
        t = build_train_transform(AugmentConfig(), seed=seed)
        runs.append([np.concatenate(t(image, mask)) for _ in range(12)])
    assert all(np.array_equal(a, b) for a, b in zip(runs[0], runs[1], strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(runs[0], runs[2], strict=True))


def test_reseed_restarts_the_stream():
    image, mask = blocks()
    t = build_train_transform(AugmentConfig(), seed=5)
    first = [np.concatenate(t(image, mask)) for _ in range(6)]
    t.reseed(5)
    assert all(np.array_equal(a, np.concatenate(t(image, mask))) for a in first)


def test_all_probabilities_zero_is_identity():
    image, mask = blocks()
    t = build_train_transform(OFF, seed=0)
    assert t.transforms == []
    out_image, out_mask = t(image, mask)
    assert np.array_equal(out_image, image) and np.array_equal(out_mask, mask)
    assert build_eval_transform()(image, mask) == (image, mask)


def test_hflip_moves_image_and_mask_together():
    image, mask = blocks()
    out_image, out_mask = build_train_transform(only(hflip=1.0), seed=0)(image, mask)
    assert np.array_equal(out_image, image[:, ::-1]) and np.array_equal(out_mask, mask[:, ::-1])


def test_crop_resizes_back_and_keeps_image_and_mask_aligned():
    image, mask = blocks()
    t = build_train_transform(only(crop=1.0, hflip=0.5, shift_scale_rotate=1.0), seed=1)
    for _ in range(10):
        out_image, out_mask = t(image, mask)
        assert out_image.shape == out_mask.shape == (101, 101) and out_mask.dtype == np.uint8
        assert set(np.unique(out_mask)) <= {0, 1}
        assert np.mean((out_image > 130) == (out_mask == 1)) > 0.95  # differ only on resampled edges


def test_never_flips_vertically():
    rows = np.linspace(0, 255, 101).astype(np.uint8)
    image = np.repeat(rows[:, None], 101, axis=1)  # brightness grows with depth
    mask = (image > 128).astype(np.uint8)  # salt at the bottom
    t = build_train_transform(dataclasses.replace(AugmentConfig(), invert=0.0, cutout=0.0, hflip=1.0), seed=2)
    assert not any("Vertical" in type(x).__name__ for x in t.transforms)
    for _ in range(40):
        out_image, out_mask = t(image, mask)
        assert out_image[-1].mean() > out_image[0].mean() and out_mask[-1].all() and not out_mask[0].any()


def test_cutout_touches_the_image_only():
    image, mask = blocks()
    out_image, out_mask = build_train_transform(only(cutout=1.0, cutout_size=20), seed=0)(image, mask)
    assert np.array_equal(out_mask, mask)
    assert (out_image == 0).sum() == 20 * 20  # one 20x20 hole filled with 0 (the image has no zeros)


def test_transforms_fire_independently():
    # albumentations 2.0.8 Compose(seed=) would give each transform the same stream: flips would coincide
    image = np.full((101, 101), 10, np.uint8)
    mask = np.zeros((101, 101), np.uint8)
    mask[:, :50] = 1
    t = build_train_transform(only(invert=0.5, hflip=0.5), seed=0)
    seen = set()
    for _ in range(60):
        out_image, out_mask = t(image, mask)
        seen.add((bool(out_image[0, 0] == 245), bool(out_mask[0, -1] == 1)))
    assert seen == {(False, False), (False, True), (True, False), (True, True)}


def test_dataset_items_per_channel_mode():
    images = np.stack([blocks(i)[0] for i in range(4)])
    masks = np.stack([blocks(i)[1] for i in range(4)])
    depths = np.array([100.0, 200.0, 300.0, 900.0])
    for channels in ("raw", "depth", "coord"):
        item = TileDataset(images, masks, depths, channels)[3]
        image = item["image"]
        assert image.dtype == torch.float32 and image.shape == (num_channels(channels), 101, 101)
        assert 0.0 <= image.min() and image.max() <= 1.0 and item["index"] == 3
        assert torch.equal(image[0], torch.from_numpy(images[3]).float() / 255)
        assert item["mask"].shape == (1, 101, 101) and item["mask"].dtype == torch.float32
        if channels == "depth":
            assert torch.allclose(image[1], torch.full((101, 101), 900.0 / DEPTH_SCALE))
        if channels == "coord":
            assert image[1, 0].eq(0).all() and image[1, -1].eq(1).all()
        if channels != "raw":
            assert torch.allclose(image[2], image[0] * image[1])


def test_dataset_without_masks_and_bad_inputs():
    images = np.zeros((2, 101, 101), np.uint8)
    assert "mask" not in TileDataset(images, None, None, "raw")[0]
    with pytest.raises(SaltError, match="valid: raw, depth, coord"):
        TileDataset(images, None, None, "rgb")
    with pytest.raises(SaltError, match="needs depths"):
        TileDataset(images, None, None, "depth")
    with pytest.raises(ValueError, match="0/1"):
        TileDataset(images, np.full_like(images, 255), None, "raw")


def test_loader_is_reproducible_and_workers_get_distinct_augmentations():
    images = np.stack([blocks(0)[0]] * 8)
    masks = np.stack([blocks(0)[1]] * 8)
    dataset = TileDataset(images, masks, None, "raw", transform=build_train_transform(AugmentConfig(), seed=0))

    def epoch(workers: int) -> list[torch.Tensor]:
        loader = make_loader(Subset(dataset, range(8)), batch_size=2, shuffle=True, workers=workers, seed=9)
        return [batch["image"] for batch in loader]

    a, b = epoch(2), epoch(2)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    # worker 0 serves batches 0, 2; worker 1 serves 1, 3: identical tiles, different seeds
    assert not torch.equal(a[0], a[1])
