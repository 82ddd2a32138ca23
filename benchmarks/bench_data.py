"""Benchmarks of the data layer and metric (issue 2). Prints a markdown table.

    .venv/bin/python benchmarks/bench_data.py [--real ../shared/tgs]

Timings are medians over repeats; cold load clears the tile cache first.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from salt_exp.metrics import image_scores, threshold_search


def median_time(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def naive_metric(pred: np.ndarray, truth: np.ndarray) -> float:
    """A straightforward per-image Python loop: the reference ratio."""
    out = []
    for p, t in zip(pred, truth, strict=True):
        if not t.any():
            out.append(float(not p.any()))
            continue
        iou = (p & t).sum() / (p | t).sum()
        out.append(np.mean([iou > th for th in np.arange(0.5, 1.0, 0.05)]))
    return float(np.mean(out))


def synthetic_problem(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = np.zeros((n, 101, 101), bool)
    rows = rng.integers(0, 101, n)
    for i in range(n):
        if i % 5 > 1:
            truth[i, rows[i]:, :] = True
    probs = np.clip(truth * 0.55 + rng.random(truth.shape, dtype=np.float32) * 0.5, 0, 1).astype(np.float32)
    return probs, truth


def bench_metric(n: int = 4000) -> list[tuple[str, float]]:
    probs, truth = synthetic_problem(n)
    pred = probs > 0.5
    thr = np.linspace(0.3, 0.7, 50)
    u8, f16 = (probs * 255).round().astype(np.uint8), probs.astype(np.float16)
    return [
        (f"metric, {n} images (bool masks)", median_time(lambda: image_scores(pred, truth))),
        (f"naive per-image Python loop, {n} images", median_time(lambda: naive_metric(pred, truth), 1)),
        (f"threshold search 50 x {n}, float32 probs", median_time(lambda: threshold_search(probs, truth, thr), 3)),
        (f"threshold search 50 x {n}, float16 probs", median_time(lambda: threshold_search(f16, truth, thr), 3)),
        (f"threshold search 50 x {n}, uint8 probs", median_time(lambda: threshold_search(u8, truth, thr), 3)),
    ]


def bench_load(root: Path) -> list[tuple[str, float]]:
    from salt_exp.data.kaggle import load_kaggle

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["SALT_EXP_CACHE"] = tmp
        cold = []
        for _ in range(3):
            for f in Path(tmp).glob("*.npz"):
                f.unlink()
            t0 = time.perf_counter()
            load_kaggle(root)
            cold.append(time.perf_counter() - t0)
        warm = median_time(lambda: load_kaggle(root))
    n = len(load_kaggle(root, cache=False).train)
    return [(f"load {n} tiles cold (validate + cache write)", float(np.median(cold))),
            (f"load {n} tiles cached", warm)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--real", default=str(Path(__file__).resolve().parents[2] / "shared" / "tgs"))
    ap.add_argument("--n", type=int, default=4000)
    args = ap.parse_args()
    rows = bench_metric(args.n)
    if Path(args.real).exists():
        rows += bench_load(Path(args.real))
    print("| what | seconds |\n| --- | --- |")
    for name, sec in rows:
        print(f"| {name} | {sec:.4f} |")


if __name__ == "__main__":
    main()
