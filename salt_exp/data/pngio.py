"""Reading and writing TGS tiles in the real Kaggle file formats.

Real-file quirks handled here: images are 8-bit RGB PNGs with three equal channels
(plain grayscale is accepted too); non-empty masks are 16-bit PNGs with values
0/65535, empty masks are 8-bit zeros. Every problem is reported as one line that
names the file.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import cv2
import numpy as np

TILE = 101
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@functools.cache
def _quiet_opencv() -> None:
    """A broken PNG is our one-line problem, not also OpenCV's log lines (once, at the first read: nothing happens at
    import); ``OPENCV_LOG_LEVEL`` set by the user wins."""
    if "OPENCV_LOG_LEVEL" not in os.environ:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


class TileProblem(ValueError):
    """A problem with one tile file; the message starts with the file path."""


def _read(path: Path) -> np.ndarray:
    _quiet_opencv()
    if not path.is_file():
        raise TileProblem(f"{path}: file not found")
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise TileProblem(f"{path}: unreadable ({exc.strerror or exc})") from None
    if data[:8].tobytes() != PNG_SIGNATURE:  # cv2 would also decode a JPEG or BMP under a .png name
        raise TileProblem(f"{path}: unreadable or corrupt PNG (the file does not start with the PNG signature)")
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise TileProblem(f"{path}: unreadable or corrupt PNG")
    return img


def _one_plane(path: Path, arr: np.ndarray, what: str) -> np.ndarray:
    """A (H, W) plane of a grayscale file: RGB(A) files must hold three equal channels (alpha ignored)."""
    if arr.ndim == 2:
        return arr
    rgb = arr[:, :, :3]
    if rgb.shape[2] > 1 and not all(np.array_equal(rgb[:, :, 0], rgb[:, :, c]) for c in range(1, rgb.shape[2])):
        raise TileProblem(f"{path}: expected a grayscale {what} (RGB with three equal channels), channels differ")
    return rgb[:, :, 0]


def _check_size(path: Path, arr: np.ndarray, size: int) -> None:
    if arr.shape[:2] != (size, size):
        raise TileProblem(f"{path}: expected a {size}x{size} tile, got {arr.shape[1]}x{arr.shape[0]}")


def read_image(path: str | Path, size: int = TILE) -> np.ndarray:
    """Read a tile image as a (size, size) uint8 array."""
    path = Path(path)
    img = _read(path)
    _check_size(path, img, size)
    if img.dtype != np.uint8:
        raise TileProblem(f"{path}: expected an 8-bit image, got {img.dtype}")
    return np.ascontiguousarray(_one_plane(path, img, "tile"))


def read_mask(path: str | Path, size: int = TILE) -> np.ndarray:
    """Read a mask as a (size, size) uint8 array of 0/1.

    Accepted: 8- or 16-bit single-channel (or equal-channel RGB) PNGs whose values
    are 0 and the type's maximum (255 or 65535); 0/1 masks are accepted too.
    """
    path = Path(path)
    mask = _read(path)
    _check_size(path, mask, size)
    mask = _one_plane(path, mask, "mask")
    top = np.iinfo(mask.dtype).max if mask.dtype.kind == "u" else 1
    values = np.unique(mask)
    if not (set(values.tolist()) <= {0, top} or set(values.tolist()) <= {0, 1}):
        bad = [v for v in values.tolist() if v not in (0, 1, top)][:3]
        raise TileProblem(f"{path}: mask values must be 0 or {top} ({mask.dtype}), found {bad}")
    return (mask != 0).astype(np.uint8)


def write_image(path: str | Path, image: np.ndarray) -> None:
    """Write a (H, W) uint8 tile as an 8-bit RGB PNG with three equal channels (the real format)."""
    rgb = np.repeat(np.asarray(image, dtype=np.uint8)[:, :, None], 3, axis=2)
    if not cv2.imwrite(str(path), rgb):
        raise OSError(f"{path}: could not write PNG")


def write_mask(path: str | Path, mask: np.ndarray) -> None:
    """Write a 0/1 mask as the real files do: 16-bit 0/65535 when non-empty, 8-bit zeros when empty."""
    mask = np.asarray(mask) != 0
    out = mask.astype(np.uint16) * 65535 if mask.any() else np.zeros(mask.shape, np.uint8)
    if not cv2.imwrite(str(path), out):
        raise OSError(f"{path}: could not write PNG")
