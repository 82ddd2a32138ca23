"""Synthetic seismic sections with salt bodies: the geometry and the rendering.

A section is a 2-D image several tiles wide and tall. Sediments are layered reflectors: a 1-D
reflectivity series convolved with a Ricker wavelet, sampled along a "horizon time" field that is
folded (sinusoids and gaussian bumps), faulted (vertical offsets on one side of inclined lines) and
dragged upwards near salt flanks. Salt bodies (diapirs rising from the bottom, lens-shaped sheets,
an optional mother-salt layer) replace the sediments by a weak chaotic texture and add a strong
bright reflection at their top. Everything is vectorised numpy/cv2; only loops over bodies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

TILE = 101


@dataclass(frozen=True)
class Section:
    """One rendered section: ``image`` (H, W) uint8 and the true salt geometry ``salt`` (H, W) bool."""

    image: np.ndarray
    salt: np.ndarray


def ricker(wavelength: float) -> np.ndarray:
    """Ricker (Mexican-hat) wavelet whose dominant wavelength is ``wavelength`` pixels, zero-mean."""
    half = int(np.ceil(1.5 * wavelength))
    t = np.arange(-half, half + 1, dtype=np.float64)
    a = (np.pi * t / wavelength) ** 2
    w = (1.0 - 2.0 * a) * np.exp(-a)
    return (w - w.mean()).astype(np.float32)


def smooth_noise_1d(rng: np.random.Generator, n: int, scale: float) -> np.ndarray:
    """Zero-mean, unit-std random curve of length ``n`` with correlation length ~``scale`` pixels."""
    raw = rng.standard_normal(n + 8 * int(scale) + 2)
    kernel = np.exp(-0.5 * (np.arange(-3 * int(scale) - 1, 3 * int(scale) + 2) / max(scale, 1.0)) ** 2)
    out = np.convolve(raw, kernel, mode="same")[4 * int(scale) + 1 : 4 * int(scale) + 1 + n]
    return ((out - out.mean()) / (out.std() + 1e-9)).astype(np.float32)


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std 2-D gaussian random field with correlation length ~``sigma`` pixels.

    Large sigmas are drawn on a coarse grid and upsampled: a full-resolution blur with a kernel
    hundreds of pixels wide would dominate the generation time.
    """
    factor = max(1, int(sigma // 4))
    small_shape = (shape[0] // factor + 4, shape[1] // factor + 4)
    raw = rng.standard_normal(small_shape, dtype=np.float32)
    small = cv2.GaussianBlur(raw, (0, 0), sigmaX=sigma / factor, borderType=cv2.BORDER_REFLECT)
    out = cv2.resize(small, (small_shape[1] * factor, small_shape[0] * factor), interpolation=cv2.INTER_LINEAR)
    out = out[: shape[0], : shape[1]]
    return (out - out.mean()) / (out.std() + 1e-9)


def _diapir(rng: np.random.Generator, y: np.ndarray, x: np.ndarray, *, height: int, width: int) -> np.ndarray:
    """A diapir rising from the bottom: rounded crest, steep leaning wiggly flanks, rugose top."""
    xc = rng.uniform(0.05, 0.95) * width
    top = rng.uniform(0.03, 0.6) * height
    half_width = np.exp(rng.uniform(np.log(0.25), np.log(1.5))) * TILE
    crest = rng.uniform(0.1, 0.6) * half_width  # how far the crest drops from its apex to the shoulders
    steep = rng.uniform(4.0, 20.0)  # flank slope dy/dx: near vertical
    lean = rng.uniform(-0.25, 0.25)  # horizontal drift per pixel of depth
    wiggle = rng.uniform(3.0, 25.0) * smooth_noise_1d(rng, height, rng.uniform(25.0, 80.0))
    neck = 1.0 + rng.uniform(0.0, 0.35) * smooth_noise_1d(rng, height, rng.uniform(60.0, 150.0))
    rugose = rng.uniform(2.0, 12.0) * smooth_noise_1d(rng, width, rng.uniform(6.0, 25.0))
    centre = xc + lean * (np.arange(height, dtype=np.float32) - top) + wiggle
    # Only a slab of columns can hold salt: compute the implicit shape there, not on the whole section.
    reach = (half_width + (height - top + np.abs(rugose).max()) / steep) * max(float(neck.max()), 1e-3) + 2
    lo = int(np.clip(np.floor(centre.min() - reach), 0, width))
    hi = int(np.clip(np.ceil(centre.max() + reach) + 1, lo, width))
    mask = np.zeros((height, width), dtype=bool)
    u = np.abs(x[:, lo:hi] - centre[:, None]) / np.maximum(neck, 0.1)[:, None]
    profile = top + crest * np.minimum(u / half_width, 1.0) ** 2 + steep * np.maximum(u - half_width, 0.0)
    mask[:, lo:hi] = y[:, lo:hi] >= profile + rugose[None, lo:hi]
    return mask


def _sheet(rng: np.random.Generator, y: np.ndarray, x: np.ndarray, *, height: int, width: int) -> np.ndarray:
    """An allochthonous salt sheet: a lens with rounded tips and rugose top and base."""
    xc = rng.uniform(0.1, 0.9) * width
    length = rng.uniform(1.0, 3.5) * TILE
    yc = rng.uniform(0.15, 0.65) * height
    thick = rng.uniform(0.3, 1.4) * TILE
    lens = np.sqrt(np.clip(1.0 - ((x - xc) / length) ** 4, 0.0, None))
    top = yc - 0.5 * thick * lens + rng.uniform(2.0, 8.0) * smooth_noise_1d(rng, width, 12.0)[None, :]
    base = yc + 0.5 * thick * lens + rng.uniform(2.0, 8.0) * smooth_noise_1d(rng, width, 20.0)[None, :]
    return (y >= top) & (y <= base) & (lens > 0)


def _mother_salt(rng: np.random.Generator, y: np.ndarray, height: int, width: int) -> np.ndarray:
    """The autochthonous salt layer at the bottom that diapirs grow from."""
    thick = rng.uniform(0.15, 0.7) * TILE
    undulation = rng.uniform(3.0, 15.0) * smooth_noise_1d(rng, width, 40.0)
    return y >= height - thick + undulation[None, :]


def salt_geometry(rng: np.random.Generator, height: int, width: int, *, diapirs: int, sheets: int) -> np.ndarray:
    """The true salt mask of a section, (height, width) bool."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    salt = np.zeros((height, width), dtype=bool)
    for _ in range(diapirs):
        salt |= _diapir(rng, y, x, height=height, width=width)
    for _ in range(sheets):
        salt |= _sheet(rng, y, x, height=height, width=width)
    if rng.random() < 0.5:
        salt |= _mother_salt(rng, y, height, width)
    return salt


def _fault_offsets(rng: np.random.Generator, height: int, width: int, faults: int) -> np.ndarray:
    """Vertical throws on one side of inclined fault lines, tapered along each fault."""
    cols = np.arange(width, dtype=np.float32)[None, :]
    rows = np.arange(height, dtype=np.float32)[:, None]
    shift = np.zeros((height, width), dtype=np.float32)
    for _ in range(faults):
        theta = math.radians(rng.uniform(55.0, 85.0)) * rng.choice([-1.0, 1.0])
        cos, sin = math.cos(theta), math.sin(theta)  # python floats keep the arrays float32
        dx, dy = cols - rng.uniform(0, width), rows - rng.uniform(0, height)
        along = (dx * cos + dy * sin) / (rng.uniform(2.0, 6.0) * TILE)
        throw = float(rng.uniform(4.0, 25.0) * rng.choice([-1.0, 1.0]))
        shift += np.where(dy * cos > dx * sin, throw * np.exp(-(along**2)), 0.0).astype(np.float32)
    return shift


def horizon_time(rng: np.random.Generator, salt: np.ndarray, faults: int) -> np.ndarray:
    """Per-pixel layer coordinate t(y, x): a reflector is a level set of t."""
    height, width = salt.shape
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    depth = y / height
    t = y.copy()
    for _ in range(3):  # folding: long sinusoids whose amplitude grows with depth
        period = rng.uniform(1.5, 8.0) * TILE
        t += rng.uniform(3.0, 25.0) * (0.3 + depth) * np.sin(2 * np.pi * x / period + rng.uniform(0, 2 * np.pi))
    t += rng.uniform(5.0, 30.0) * smooth_field(rng, (height, width), rng.uniform(60.0, 150.0))
    outside = cv2.distanceTransform((~salt).astype(np.uint8), cv2.DIST_L2, 5)
    drag = rng.uniform(20.0, 60.0) * np.exp(-outside / rng.uniform(15.0, 50.0)) * (0.3 + depth)
    t += drag  # layers bend upwards against the salt (a level set of t moves to smaller y)
    return t + _fault_offsets(rng, height, width, faults)


def _trace(rng: np.random.Generator, n: int, wavelength: float) -> np.ndarray:
    """A 1-D seismic trace: blocky-amplitude reflectivity convolved with a Ricker wavelet."""
    envelope = 0.3 + np.abs(smooth_noise_1d(rng, n, rng.uniform(8.0, 40.0)))
    spikes = rng.laplace(size=n) * (rng.random(n) < rng.uniform(0.3, 0.9))
    trace = np.convolve(spikes * envelope, ricker(wavelength), mode="same")
    return (trace / (trace.std() + 1e-9)).astype(np.float32)


def sediments(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    """Layered reflectors sampled along ``t``; two traces blended so the layering changes laterally."""
    lo = np.floor(t.min()) - 60.0
    n = int(np.ceil(t.max() - lo)) + 120
    grid = np.arange(n, dtype=np.float32)
    wavelength = rng.uniform(14.0, 36.0)
    first = np.interp(t - lo, grid, _trace(rng, n, wavelength))
    second = np.interp(t - lo, grid, _trace(rng, n, wavelength * rng.uniform(0.7, 1.5)))
    blend = 1.0 / (1.0 + np.exp(-2.0 * smooth_field(rng, t.shape, rng.uniform(80.0, 200.0))))
    amplitude = 0.55 + 0.45 / (1.0 + np.exp(-1.5 * smooth_field(rng, t.shape, rng.uniform(50.0, 150.0))))
    return ((first * blend + second * (1.0 - blend)) * amplitude).astype(np.float32)


def _column_filter(image: np.ndarray, kernel: np.ndarray, axis: int) -> np.ndarray:
    """Correlate every column (axis=0) or row (axis=1) of ``image`` with a 1-D ``kernel``."""
    k = kernel.reshape(-1, 1) if axis == 0 else kernel.reshape(1, -1)
    return cv2.filter2D(image, -1, k, borderType=cv2.BORDER_REFLECT)


def _streaks(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Chaotic, steeply dipping streaks: anisotropic noise rotated by a random angle."""
    raw = rng.standard_normal(shape, dtype=np.float32)
    sx, sy = rng.uniform(1.0, 2.0), rng.uniform(5.0, 12.0)
    streaks = cv2.GaussianBlur(raw, (0, 0), sigmaX=sx, sigmaY=sy)
    return streaks / (streaks.std() + 1e-9)


def add_salt(rng: np.random.Generator, sed: np.ndarray, salt: np.ndarray) -> np.ndarray:
    """Replace sediments inside salt by a weak chaotic texture; add the top/flank reflections and
    the dimmed, noisier zone below salt."""
    soft = cv2.GaussianBlur(salt.astype(np.float32), (0, 0), sigmaX=1.2)
    interior = rng.uniform(0.08, 0.22) * smooth_field(rng, salt.shape, rng.uniform(4.0, 9.0))
    interior += rng.uniform(0.05, 0.15) * _streaks(rng, salt.shape)
    interior += rng.uniform(0.0, 0.15) * sed  # faint ghost reflectors make some boundaries ambiguous
    wavelet = ricker(rng.uniform(14.0, 26.0))
    top = _column_filter(np.diff(soft, axis=0, prepend=soft[:1]), wavelet, axis=0)
    flank = _column_filter(np.diff(soft, axis=1, prepend=soft[:, :1]), wavelet, axis=1)
    reflection = rng.uniform(1.5, 5.0) * top + rng.uniform(0.3, 1.2) * flank
    above = np.cumsum(salt, axis=0, dtype=np.float32)
    shade = 1.0 - rng.uniform(0.3, 0.6) * np.clip(above / (0.5 * TILE), 0.0, 1.0)
    return sed * shade * (1.0 - soft) + interior * soft + reflection


def add_noise(rng: np.random.Generator, image: np.ndarray, level: float) -> np.ndarray:
    """White plus band-limited noise (scaled per section by a random factor), then a mild blur."""
    scale = level * rng.uniform(0.3, 1.6)
    noisy = image + scale * (0.2 * smooth_field(rng, image.shape, 0.7) + smooth_field(rng, image.shape, 2.5))
    sigma = rng.uniform(0.4, 1.2)
    return cv2.GaussianBlur(noisy.astype(np.float32), (0, 0), sigmaX=sigma)


def tone_map(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Per-section gain, slowly varying brightness and gamma, to mid-grey uint8."""
    z = (image - image.mean()) / (image.std() + 1e-9)
    brightness = rng.uniform(-0.06, 0.06) + rng.uniform(0.04, 0.1) * smooth_field(rng, image.shape, 120.0)
    value = np.clip(0.48 + rng.uniform(0.09, 0.16) * z + brightness, 0.0, 1.0)
    value **= rng.uniform(0.8, 1.25)
    return np.round(value * 255.0).astype(np.uint8)


def render_section(
    rng: np.random.Generator, rows: int, cols: int, *, diapirs: int, sheets: int, faults: int, noise: float
) -> Section:
    """Render one section of ``rows`` x ``cols`` tiles with the given numbers of bodies and faults."""
    height, width = rows * TILE, cols * TILE
    salt = salt_geometry(rng, height, width, diapirs=diapirs, sheets=sheets)
    sed = sediments(rng, horizon_time(rng, salt, faults))
    image = add_noise(rng, add_salt(rng, sed, salt), noise)
    return Section(image=tone_map(rng, image), salt=salt)
