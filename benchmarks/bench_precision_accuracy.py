"""Does bf16 autocast cost accuracy? The same fold run in fp32 and bf16, several seeds, side by side.

    .venv/bin/python benchmarks/bench_precision_accuracy.py [--data data/synthetic] [--seeds 1 2 3]
        [--config configs/tiny.yaml] [--set key=value ...]

Default run: the quickstart's trial-0 recipe (tiny UNet, 64 px, 2 cycles x 3 epochs x 25 batches,
SGD 0.05, BCE + 0.5 Lovasz) on fold 0 of the synthetic set; each (seed, precision) is one fold run in
a throwaway MLflow store. Prints best val_map per run, the per-seed difference and the spread, and
the training images/s of each precision (the same machine, one after another).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ["train.device=cpu", "train.max_train_batches=25", "train.val_batch_size=128", "padding.mode=resize",
          "padding.size=64", "schedule.cycles=2", "schedule.cycle_epochs=3", "lr_find.enabled=false",
          "optim.lr=0.05", "train.channels_last=false"]


def one_run(config: str, data: str, *, seed: int, precision: str, extra: list[str]) -> dict:
    from mlflow.tracking import MlflowClient

    from salt_exp.config import load_config
    from salt_exp.train.run import run_fold

    cfg = load_config(config, [f"data.root={data}", *RECIPE, f"seed={seed}", f"train.precision={precision}", *extra])
    info = run_fold(cfg, 0, study=f"acc-{precision}-{seed}")
    c = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    run = c.get_run(info.run_id)
    ips = [m.value for m in c.get_metric_history(info.run_id, "train_images_per_s")]
    return {"seed": seed, "precision": run.data.tags.get("salt.precision", precision),
            "best_val_map": info.result.best_val_map, "images_per_s": statistics.median(ips)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT / "data/synthetic"))
    ap.add_argument("--config", default=str(ROOT / "configs/tiny.yaml"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--set", action="append", default=[], help="extra override for both precisions")
    args = ap.parse_args()
    from salt_exp.train.cpu import detect_cpu

    print(f"CPU: {detect_cpu().describe()}; load {os.getloadavg()[0]:.2f}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="salt-acc-") as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        os.environ["SALT_EXP_WORK"] = f"{tmp}/work"
        for seed in args.seeds:
            for precision in ("fp32", "bf16"):
                rows.append(one_run(args.config, args.data, seed=seed, precision=precision, extra=args.set))
                r = rows[-1]
                print(f"seed {seed} {r['precision']:>4}: best val_map {r['best_val_map']:.4f}, "
                      f"{r['images_per_s']:.1f} img/s", flush=True)
    by = {(r["seed"], r["precision"]): r for r in rows}
    diffs = [by[(s, "bf16")]["best_val_map"] - by[(s, "fp32")]["best_val_map"] for s in args.seeds
             if (s, "bf16") in by and (s, "fp32") in by]
    for p in ("fp32", "bf16"):
        vals = [r["best_val_map"] for r in rows if r["precision"] == p]
        if vals:
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            print(f"{p}: mean best val_map {statistics.mean(vals):.4f} (sd over seeds {sd:.4f}), "
                  f"median {statistics.median(r['images_per_s'] for r in rows if r['precision'] == p):.1f} img/s")
    if diffs:
        print("bf16 - fp32 per seed: " + ", ".join(f"{d:+.4f}" for d in diffs)
              + f"; mean {statistics.mean(diffs):+.4f}")


if __name__ == "__main__":
    main()
