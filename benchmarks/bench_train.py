"""Training-side benchmarks (issue 4): tracking overhead and data-loading headroom.

    .venv/bin/python benchmarks/bench_train.py [--data data/synthetic] [--encoder resnet34] [--workers 2]

1. Tracking overhead: a short fold run whose hooks are timed; overhead = time inside the MLflow
   hook (metrics, artifacts, registry) / total epoch time. Uses a throwaway SQLite store.
2. Data-loading throughput: images/s the train loader delivers alone (augmentations, collation,
   workers) against images/s the model consumes in training (from the same run).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from salt_exp.config import load_config


class TimedHook:
    """Wraps a hook and adds up the seconds spent in it."""

    def __init__(self, inner) -> None:
        self.inner, self.seconds, self.by_event = inner, 0.0, {}

    def __getattr__(self, name):
        fn = getattr(self.inner, name)

        def timed(*args):
            t0 = time.perf_counter()
            try:
                return fn(*args)
            finally:
                dt = time.perf_counter() - t0
                self.seconds += dt
                self.by_event[name] = self.by_event.get(name, 0.0) + dt
        return timed


def run(args: argparse.Namespace) -> None:
    from salt_exp.train import fold_run
    from salt_exp.train.run import run_fold
    from salt_exp.train.setup import load_fold, train_loader

    overrides = [f"data.root={Path(args.data).resolve()}", f"model.encoder={args.encoder}", "schedule.cycles=1",
                 f"schedule.cycle_epochs={args.epochs}", f"train.max_train_batches={args.batches}",
                 f"train.workers={args.workers}", "lr_find.steps=10"]
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs/base.yaml", overrides)
    timed: list[TimedHook] = []
    original = fold_run.FoldTrainer.__init__

    def init(self, cfg, fd, fold, workdir, hooks):
        wrapped = [TimedHook(h) for h in hooks]
        timed.extend(wrapped)
        original(self, cfg, fd, fold, workdir, wrapped)

    fold_run.FoldTrainer.__init__ = init
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        os.environ["SALT_EXP_WORK"] = f"{tmp}/work"
        home = os.getcwd()
        os.chdir(tmp)
        t0 = time.perf_counter()
        info = run_fold(cfg, 0, study="bench")
        wall = time.perf_counter() - t0
        from mlflow.tracking import MlflowClient

        c = MlflowClient()
        hist = {k: [m.value for m in c.get_metric_history(info.run_id, k)] for k in ("epoch_seconds", "train_images_per_s")}
        fd = load_fold(cfg, 0)
        loader = train_loader(cfg, fd, 0)
        n, t0 = 0, time.perf_counter()
        for _ in range(3):
            for batch in loader:
                n += len(batch["image"])
        load_ips = n / (time.perf_counter() - t0)
        os.chdir(home)
    hook_s = sum(h.seconds for h in timed)
    per_epoch_s = sum(h.by_event.get("on_epoch", 0.0) for h in timed)
    per_cycle_s = sum(h.by_event.get("on_snapshot", 0.0) for h in timed)
    epoch_s = sum(hist["epoch_seconds"])
    model_ips = sum(hist["train_images_per_s"]) / len(hist["train_images_per_s"])
    print(f"| encoder | {args.encoder} |\n| --- | --- |")
    print(f"| run wall time (s) | {wall:.1f} |")
    print(f"| epochs x batches | {args.epochs} x {args.batches} (batch {cfg.optim.batch_size}) |")
    print(f"| time in MLflow hook (s), all events incl. LR-find plot and snapshot registration | {hook_s:.2f} |")
    print(f"| total epoch time (s) | {epoch_s:.1f} |")
    print(f"| of which per-epoch metric logging (s) | {per_epoch_s:.2f} |")
    print(f"| of which per-cycle snapshot logging + registration (s) | {per_cycle_s:.2f} |")
    print(f"| tracking overhead, this run | {100 * hook_s / epoch_s:.2f}% |")
    print(f"| tracking overhead per epoch (metrics) | {100 * per_epoch_s / epoch_s:.2f}% |")
    print(f"| projected overhead, 50-epoch cycles | {100 * (per_epoch_s / args.epochs * 50 + per_cycle_s) / (epoch_s / args.epochs * 50):.2f}% |")
    print(f"| model training throughput (images/s) | {model_ips:.1f} |")
    print(f"| loader alone, workers={args.workers} (images/s) | {load_ips:.1f} |")
    print(f"| loading headroom | {load_ips / model_ips:.1f}x |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="data/synthetic")
    ap.add_argument("--encoder", default="resnet34")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    run(ap.parse_args())


if __name__ == "__main__":
    main()
