"""Tile adaptation 101 -> 128: exact inverse, offsets, biharmonic border, resize, dataset cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from salt_exp.data import padding
from salt_exp.data.padding import PAD_MODES, TileAdapter, pad_array
from salt_exp.errors import SaltError

FAST_MODES = [m for m in PAD_MODES if m not in ("biharmonic", "resize")]


@settings(max_examples=15, deadline=None)
@given(
    mode=st.sampled_from(FAST_MODES),
    size=st.sampled_from([101, 128, 160]),
    seed=st.integers(0, 2**31 - 1),
    channels=st.integers(1, 3),
)
def test_crop_inverts_pad_exactly(mode: str, size: int, seed: int, channels: int) -> None:
    x = torch.rand(2, channels, 101, 101, generator=torch.Generator().manual_seed(seed))
    adapter = TileAdapter(mode, size)
    padded = adapter.pad(x)
    assert padded.shape == (2, channels, size, size)
    assert torch.equal(adapter.crop(padded), x)


def test_offsets_13_before_14_after() -> None:
    x = torch.arange(101.0).repeat(101, 1)[None, None]  # value = column index
    padded = TileAdapter("replicate").pad(x)
    assert padded.shape == (1, 1, 128, 128)
    assert torch.equal(padded[0, 0, 13, 13:114], x[0, 0, 0])
    assert (padded[0, 0, 0, :14] == 0).all() and (padded[0, 0, 0, 114:] == 100).all()
    zero = TileAdapter("zero").pad(x + 1)
    assert (zero[..., :13, :] == 0).all() and (zero[..., 114:, :] == 0).all() and (zero[..., 13, 13:114] > 0).all()


def test_reflect_replicate_directions() -> None:
    x = torch.rand(1, 1, 101, 101)
    padded = TileAdapter("reflect_replicate").pad(x)
    inner_rows = padded[0, 0, 13:114]
    torch.testing.assert_close(inner_rows[:, 12], x[0, 0, :, 1])  # horizontal: reflect
    torch.testing.assert_close(padded[0, 0, 0], padded[0, 0, 13])  # vertical: replicate


def test_biharmonic_fills_the_border_smoothly_and_keeps_the_inside() -> None:
    yy, xx = np.mgrid[0:101, 0:101]
    plane = (40 + 0.8 * yy + 0.5 * xx).astype(np.float32)
    noise = (np.random.default_rng(0).random((101, 101)) * 255).astype(np.float32)
    tiles = np.stack([plane, noise, np.full((101, 101), 7, np.float32)])
    out = pad_array(tiles, "biharmonic")
    assert out.shape == (3, 128, 128) and out.dtype == np.float32
    assert np.array_equal(out[:, 13:114, 13:114], tiles)
    # plane: the fill continues it across the tile edge (no step), with no jump anywhere
    yy, xx = np.mgrid[-13:115, -13:115]
    ring = np.zeros((128, 128), bool)
    ring[12:115, 12:115] = True
    ring[13:114, 13:114] = False
    assert np.abs(out[0] - (40 + 0.8 * yy + 0.5 * xx))[ring].max() <= 1.3 + 1e-3  # one pixel's slope
    assert np.abs(np.diff(out[0], axis=0)).max() < 0.85 and np.abs(np.diff(out[0], axis=1)).max() < 0.55
    # noise: the border is much smoother than the tile, and within its range
    border = out[1, :13]
    assert np.abs(np.diff(border, axis=1)).mean() < 0.25 * np.abs(np.diff(noise, axis=1)).mean()
    assert border.min() >= noise.min() - 1 and border.max() <= noise.max() + 1
    assert np.allclose(out[2], 7, atol=1e-6)
    adapter = TileAdapter("biharmonic")
    x = torch.from_numpy(tiles[:1])[:, None]
    assert torch.equal(adapter.crop(adapter.pad(x)), x)


def test_pad_array_disk_cache(tmp_path, monkeypatch) -> None:
    images = (np.random.default_rng(0).random((2, 101, 101)) * 255).astype(np.uint8)
    first = pad_array(images, "reflect", cache_dir=tmp_path)
    assert len(list(tmp_path.glob("pad-reflect-128-*.npy"))) == 1
    monkeypatch.setattr(padding, "_pad_numpy", lambda *a: pytest.fail("cache not used"))
    assert np.array_equal(pad_array(images, "reflect", cache_dir=tmp_path), first)
    assert np.array_equal(first[:, 13:114, 13:114], images)


def test_resize_inverse_is_close() -> None:
    yy, xx = torch.meshgrid(torch.linspace(0, 3, 101), torch.linspace(0, 2, 101), indexing="ij")
    x = torch.sin(yy + xx)[None, None]
    adapter = TileAdapter("resize")
    padded = adapter.pad(x)
    assert padded.shape == (1, 1, 128, 128)
    assert (adapter.crop(padded) - x).abs().max() < 0.02


def test_unknown_mode_and_bad_shapes() -> None:
    with pytest.raises(SaltError, match="valid: replicate, reflect, reflect_replicate, zero, biharmonic, resize"):
        TileAdapter("mirror")
    with pytest.raises(SaltError, match=r"\(B, C, 101, 101\)"):
        TileAdapter().pad(torch.zeros(1, 1, 100, 100))
