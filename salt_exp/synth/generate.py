"""A synthetic TGS-like dataset in the exact Kaggle layout: the project's embedded default data.

Large seismic sections with salt bodies are rendered (``geology``), labelled at section scale
with the real annotation logic (``labels``), cut into 101x101 tiles, split into interleaved
train and test tiles, and written with the competition's file formats plus ``mosaics.csv`` (tile
positions) and ``solution.csv`` (test masks with a Public/Private ``Usage``).

Usage::

    summary = generate_dataset("data/synthetic", SynthConfig(seed=0))
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from salt_exp.errors import SaltError
from salt_exp.synth.geology import render_section
from salt_exp.synth.labels import annotate, cut_tiles
from salt_exp.synth.write import Tile, coverage_histogram, write_dataset

Z_MIN, Z_MAX = 50, 959  # the real depth range, in feet


@dataclass(frozen=True, kw_only=True)
class SynthConfig:
    """Knobs of the synthetic generator; the defaults build ~1100 train + ~370 test tiles.

    Attributes:
        seed: master seed; the same seed gives byte-identical files.
        sections: number of 2-D seismic sections (one ``mosaic_id`` each).
        tile_rows: section height in 101-pixel tiles (depth increases with the row).
        tile_cols: section width in 101-pixel tiles.
        test_fraction: share of tiles put in ``test/``, drawn at random inside every section.
        public_fraction: share of test tiles marked ``Public`` in ``solution.csv`` (Kaggle: ~34%).
        blank_fraction: share of tiles replaced by a constant zero image (real data: ~2%); only tiles
            whose label is empty are blanked.
        empty_keep: share of empty-labelled tiles kept in the dataset. Whole sections are mostly
            empty tiles; like the real competition (whose reassembled mosaics have holes), only part
            of them is kept, which brings the empty share of the data near the real ~39%.
        diapir_density: mean number of diapirs (bodies rising from the section bottom) per tile column
            of width; each section draws a Poisson count, at least one.
        sheet_density: mean number of salt sheets (lens-shaped caps) per tile column (Poisson).
        fault_density: mean number of faults per tile column (Poisson).
        noise: noise standard deviation relative to the reflector amplitude; every section scales it
            by a random factor in [0.3, 1.6].
    """

    seed: int = 0
    sections: int = 28
    tile_rows: int = 8
    tile_cols: int = 12
    test_fraction: float = 0.25
    public_fraction: float = 0.34
    blank_fraction: float = 0.02
    empty_keep: float = 0.33
    diapir_density: float = 0.6
    sheet_density: float = 0.08
    fault_density: float = 0.25
    noise: float = 0.2

    def __post_init__(self) -> None:
        for name in ("sections", "tile_rows", "tile_cols"):
            if getattr(self, name) < 1:
                raise SaltError(f"SynthConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("test_fraction", "public_fraction", "blank_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise SaltError(f"SynthConfig.{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0.0 < self.empty_keep <= 1.0:
            raise SaltError(f"SynthConfig.empty_keep must be in (0, 1], got {self.empty_keep}")
        for name in ("diapir_density", "sheet_density", "fault_density", "noise"):
            if getattr(self, name) < 0:
                raise SaltError(f"SynthConfig.{name} must be >= 0, got {getattr(self, name)}")


def _section_rng(seed: int, index: int) -> np.random.Generator:
    """An independent stream per section: section k does not change when ``sections`` does."""
    return np.random.default_rng(np.random.SeedSequence([seed, index]))


def _depths(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """Depth in feet per tile, (rows, cols) int: increasing with the row, slightly tilted laterally."""
    tilt = rng.uniform(-6.0, 6.0)
    lateral = abs(tilt) * max(cols - 1, 0)
    step = min(rng.uniform(40.0, 100.0), (Z_MAX - Z_MIN - lateral) / max(rows - 1, 1))
    z0 = rng.uniform(Z_MIN, Z_MAX - lateral - step * (rows - 1))
    r, c = np.mgrid[0:rows, 0:cols]
    z = z0 + step * r + tilt * c + (lateral if tilt < 0 else 0.0)
    return np.clip(np.round(z), Z_MIN, Z_MAX).astype(int)


def _section_tiles(cfg: SynthConfig, index: int) -> list[Tile]:
    """Render, label and cut section ``index``; ids and splits are assigned later."""
    rng = _section_rng(cfg.seed, index)
    cols = cfg.tile_cols
    section = render_section(
        rng,
        cfg.tile_rows,
        cols,
        diapirs=max(1, int(rng.poisson(cfg.diapir_density * cols))),
        sheets=int(rng.poisson(cfg.sheet_density * cols)),
        faults=int(rng.poisson(cfg.fault_density * cols)),
        noise=cfg.noise,
    )
    images, labels, depths = cut_tiles(section.image), annotate(section.salt), _depths(rng, cfg.tile_rows, cols)
    keep = labels.any(axis=(2, 3)) | (rng.random(depths.shape) < cfg.empty_keep)
    return [
        Tile(mosaic=index, x=c, y=r, z=int(depths[r, c]), image=images[r, c], label=labels[r, c])
        for r in range(cfg.tile_rows)
        for c in range(cols)
        if keep[r, c]
    ]


def _unique_ids(rng: np.random.Generator, n: int) -> list[str]:
    """``n`` distinct 10-character lowercase hex ids, like the real TGS ids."""
    ids: list[str] = []
    seen: set[str] = set()
    while len(ids) < n:
        for value in rng.integers(0, 16**10, size=n - len(ids), dtype=np.int64).tolist():
            text = f"{value:010x}"
            if text not in seen:
                seen.add(text)
                ids.append(text)
    return ids


def _finalise(cfg: SynthConfig, tiles: list[Tile]) -> None:
    """Assign ids, the train/test split, blank tiles and the Public/Private usage, in place."""
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 2**31]))
    for tile, tile_id in zip(tiles, _unique_ids(rng, len(tiles)), strict=True):
        tile.id = tile_id
    empty = [i for i, t in enumerate(tiles) if not t.label.any()]
    n_blank = min(len(empty), int(round(cfg.blank_fraction * len(tiles))))
    for i in rng.choice(empty, size=n_blank, replace=False).tolist() if n_blank else []:
        tiles[i].image = np.zeros_like(tiles[i].image)
        tiles[i].blank = True
    order = rng.permutation(len(tiles))
    n_test = int(round(cfg.test_fraction * len(tiles)))
    for rank, i in enumerate(order.tolist()):
        tiles[i].split = "test" if rank < n_test else "train"
        tiles[i].public = rank < int(round(cfg.public_fraction * n_test))


def generate_dataset(out: str | Path, cfg: SynthConfig, *, overwrite: bool = False) -> dict:
    """Generate the dataset into ``out`` atomically and return a summary.

    Raises ``SaltError`` if ``out`` exists and is not an empty directory, unless ``overwrite``.
    The summary holds the tile counts, the train empty fraction, the train coverage-bin histogram,
    the config and the seconds taken.
    """
    start = time.perf_counter()
    out = Path(out)
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise SaltError(f"{out} exists and is not empty; choose another --out or pass overwrite")
    tiles = [tile for index in range(cfg.sections) for tile in _section_tiles(cfg, index)]
    _finalise(cfg, tiles)
    write_dataset(out, tiles)
    train = [t for t in tiles if t.split == "train"]
    histogram = coverage_histogram([t.label for t in train])
    return {
        "out": str(out),
        "config": {f.name: getattr(cfg, f.name) for f in fields(cfg)},
        "train": len(train),
        "test": len(tiles) - len(train),
        "blank": sum(t.blank for t in tiles),
        "empty_fraction": histogram["empty"] / max(len(train), 1),
        "coverage_bins": histogram,
        "seconds": round(time.perf_counter() - start, 2),
    }
