"""Benchmarks of the mosaic layer: jigsaw pair precision/recall and timings, rule sanity on true masks.

    .venv/bin/python benchmarks/bench_jigsaw.py [--real ../shared/tgs] [--scale 22000]

Synthetic: ``SynthConfig(sections=6, seed=3)`` (train + test tiles) against its true mosaics.csv.
Real: the train tiles only, against the public reconstruction (precision over pairs whose tiles it
placed; recall over its pairs between train tiles). ``--scale N`` times the solver on N random
tiles (the real train + test set has ~22000). Prints markdown tables.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from salt_exp.data.kaggle import load_kaggle
from salt_exp.ensemble.jigsaw import pair_precision, solve_jigsaw
from salt_exp.ensemble.mosaic import MosaicIndex
from salt_exp.ensemble.postprocess import RULE_ORDER, measure_rules
from salt_exp.synth import SynthConfig, generate_dataset


def jigsaw_row(name: str, ids: list[str], images: np.ndarray, truth) -> str:
    t0 = time.perf_counter()
    pred = solve_jigsaw(ids, images)
    seconds = time.perf_counter() - t0
    p = pair_precision(pred, truth, ids)
    return (f"| {name} | {len(ids)} | {pred['mosaic_id'].nunique()} | {p['n_pairs']} | {p['n_unjudged']} "
            f"| {p['precision']:.4f} | {p['recall']:.4f} ({p['n_correct']}/{p['n_true']}) | {seconds:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "tgs")
    parser.add_argument("--scale", type=int, default=0, help="also time N random tiles (0: skip)")
    args = parser.parse_args()
    print("| data | tiles | mosaics | pairs | unjudged | precision | recall | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        generate_dataset(Path(tmp) / "synth", SynthConfig(sections=6, seed=3))
        data = load_kaggle(Path(tmp) / "synth", cache=False)
        ids = [*data.train.ids, *data.test.ids]
        print(jigsaw_row("synthetic (6 sections, seed 3)", ids, np.concatenate([data.train.images, data.test.images]),
                         data.mosaics))
    real = load_kaggle(args.real) if (args.real / "mosaics.csv").exists() else None
    if real is not None:
        print(jigsaw_row("real train tiles", list(real.train.ids), real.train.images, real.mosaics))
    if args.scale:
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (args.scale, 101, 101), dtype=np.uint8)
        t0 = time.perf_counter()
        solve_jigsaw([str(i) for i in range(args.scale)], images)
        print(f"| random tiles (timing only) | {args.scale} | | | | | | {time.perf_counter() - t0:.2f} |")
    if real is not None:
        index = MosaicIndex.from_frame(real.mosaics)
        print("\nRules applied to the TRUE train masks with the real mosaics (upper-bound sanity check):\n")
        print("| rule | score before | score after | gain | tiles changed |")
        print("|---|---|---|---|---|")
        masks = real.train.masks
        for r in measure_rules(masks, masks, list(real.train.ids), real.train.images, index=index, rules=RULE_ORDER):
            print(f"| {r['rule']} | {r['score_before']:.4f} | {r['score_after']:.4f} | {r['gain']:+.4f} "
                  f"| {r['tiles_changed']} |")


if __name__ == "__main__":
    main()
