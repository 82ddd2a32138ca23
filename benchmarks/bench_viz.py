"""Benchmark of the visual analysis at real-data scale: analysis, report, the largest mosaic, a GIF.

    .venv/bin/python benchmarks/bench_viz.py [--real ../shared/tgs] [--out /tmp/bench-viz]

Predictions are made without a model, so that the benchmark needs no training: the true masks
blurred and thresholded with noise (a model-like mix of right, shifted and missed shapes), stored
as float16 probabilities like a run's OOF. No MLflow: it times the pure analysis and drawing.
Also prints the mask-type counts of the true masks (what the report's "by mask type" groups hold).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np

from salt_exp.data.kaggle import load_kaggle
from salt_exp.ensemble.build import mosaic_index
from salt_exp.viz.analysis import MASK_TYPES, mask_types
from salt_exp.viz.evolution import write_gif
from salt_exp.viz.mosaic_plot import figure_rgb, render_mosaic
from salt_exp.viz.report import write_report
from salt_exp.viz.sources import Predictions, RunOutput


def fake_probs(masks: np.ndarray, seed: int = 0) -> np.ndarray:
    """Blurred truth + noise + a random shift per tile, in [0, 1], float16."""
    rng = np.random.default_rng(seed)
    out = np.empty(masks.shape, np.float16)
    for i, m in enumerate(masks.astype(np.float32)):
        dx, dy = rng.integers(-6, 7, 2)
        shifted = np.roll(m, (int(dy), int(dx)), axis=(0, 1))
        blurred = cv2.GaussianBlur(shifted, (0, 0), 4)
        out[i] = np.clip(blurred + rng.normal(0, 0.25, m.shape) * 0.5 + rng.normal(0, 0.15), 0, 1)
    return out


def timed(label: str, fn, *args, **kwargs):
    t0 = time.perf_counter()
    value = fn(*args, **kwargs)
    print(f"| {label} | {time.perf_counter() - t0:.2f} |")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "tgs")
    parser.add_argument("--data", type=Path, default=Path("data/synthetic"), help="used when --real is absent")
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench-viz"))
    args = parser.parse_args()
    root = args.real if (args.real / "train.csv").exists() else args.data
    data = load_kaggle(root)
    train = data.train
    print(f"data: {root} ({len(train)} train tiles)\n")
    types = np.bincount(mask_types(train.images, train.masks), minlength=len(MASK_TYPES))
    print("| mask type | " + " | ".join(MASK_TYPES) + " |\n|---|" + "---|" * len(MASK_TYPES))
    print("| tiles | " + " | ".join(str(int(c)) for c in types) + " |\n")
    print("| step | seconds |\n|---|---|")
    probs = timed("fake OOF probabilities (not part of the tool)", fake_probs, train.masks)
    output = RunOutput(label="bench", run_id=None, role="fold", data_root=str(root),
                       oof=Predictions(ids=train.ids, pred=probs > 0.5, probs=probs, threshold=0.5), test=None)
    index, source = timed("mosaic index", mosaic_index, data)
    images = dict(zip(train.ids.tolist(), train.images, strict=True))
    truth, pred = dict(zip(train.ids.tolist(), train.masks, strict=True)), output.masks()
    report = timed(f"write_report, {len(train)} tiles (analysis + 6 figures + HTML)", write_report, output, data,
                   out_dir=args.out, context={}, n_worst=12,
                   mosaic=(index, lambda m: render_mosaic(index, m, images=images, truth=truth, pred=pred, title="bench")))
    sizes = {m: sum(1 for (mid, _, _) in index.tile_at if mid == m) for m in index.mosaic_ids}
    big = max(sizes, key=sizes.get)
    fig = timed(f"render the largest mosaic ({sizes[big]} tiles, {index.shape(big)} grid)", render_mosaic, index, big,
                images=images, truth=truth, pred=pred, title="bench")
    frame = timed("  draw it to pixels", figure_rgb, fig)
    timed("GIF of 5 such frames", write_gif, [frame] * 5, args.out / "five.gif")
    print(f"\nscore {report.analysis.score:.4f}; mosaics from {source}; page {report.html.stat().st_size / 1e6:.1f} MB; "
          f"largest frame {frame.shape[1]}x{frame.shape[0]} px; GIF {(args.out / 'five.gif').stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
