"""Test-prediction throughput with horizontal-flip TTA (issue 6): images/s of the ensemble's predict path.

    .venv/bin/python benchmarks/bench_predict.py [--encoder resnet34] [--n 256] [--device auto]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from salt_exp.config import load_config
from salt_exp.data.dataset import TileDataset, make_loader
from salt_exp.train.engine import Runtime, predict
from salt_exp.train.setup import build_parts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--encoder", default="resnet34")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs/base.yaml", [f"model.encoder={args.encoder}"])
    model, adapter, _ = build_parts(cfg)
    rt = Runtime.resolve(args.device, cfg.train.amp, cfg.train.channels_last)
    model.to(rt.device)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.n, 101, 101), dtype=np.uint8)
    loader = make_loader(TileDataset(images, None, np.zeros(args.n), "raw"), args.batch, False, 0, seed=0)
    predict(model, adapter, [next(iter(loader))], rt, hflip_tta=True)  # warm-up
    for tta in (False, True):
        t0 = time.perf_counter()
        predict(model, adapter, loader, rt, hflip_tta=tta)
        dt = time.perf_counter() - t0
        print(f"| {args.encoder} | {rt.device.type} | TTA {'h-flip' if tta else 'none'} | {args.n / dt:.1f} images/s |")


if __name__ == "__main__":
    main()
