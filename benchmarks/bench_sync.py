"""What syncing a fold run's resume checkpoint to the store costs (issue 21).

Against a local ``mlflow server`` that proxies artifacts (``mlflow-artifacts:``, as for machines that share no disk
with it), over a fresh SQLite store in a temp folder:

1. ``tiny``: a real fold run of ``configs/tiny.yaml`` on the synthetic set with ``sync.mode=always`` and
   ``sync.max_overhead=1`` (a sync after every epoch); its logged ``sync_seconds`` / ``sync_mb`` / ``sync_overhead``
   against its ``epoch_seconds``: the measured overhead per epoch.
2. ``resnet34`` / ``se_resnext50_32x4d`` (reference config, untrained, one SGD step so the momentum buffers exist):
   the size of ``last.pt`` and its upload time (median of ``--repeats``), the upload rate, and from it the overhead
   per epoch at a given epoch time, and the sync interval ``sync.max_overhead=0.02`` leads to.

    .venv/bin/python benchmarks/bench_sync.py [--data data/synthetic] [--repeats 3] \
        [--epoch-s resnet34=190,se_resnext50_32x4d=960]

Epoch times are inputs, not measured here: the defaults are this CPU's full pass of a fold (2400 tiles) at the
training throughputs of docs/BENCHMARKS.md (resnet34 bf16 ~12.7 img/s; SE-ResNeXt-50 ~2.5 img/s).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _parse_epochs(text: str) -> dict[str, float]:
    return {k: float(v) for k, v in (item.split("=") for item in text.split(",") if item)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT / "data" / "synthetic"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=4, help="epochs of the tiny fold run")
    ap.add_argument("--epoch-s", default="resnet34=190,se_resnext50_32x4d=960")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-sync-"))
    os.environ.update({"SALT_EXP_WORK": str(tmp / "work"), "SALT_EXP_FOLDS": str(tmp / "folds"),
                       "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"})
    import logging

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    import torch

    from salt_exp.config import load_config
    from salt_exp.study.server import LocalServer
    from salt_exp.tracking import RunTracker, client
    from salt_exp.train.run import run_fold
    from salt_exp.train.setup import build_optimizer, build_parts
    from salt_exp.train.state import RunState, save_state

    server = LocalServer(f"sqlite:///{tmp / 'mlflow.db'}", tmp / "artifacts", tmp / "server.log", proxy_artifacts=True)
    rows = []
    with server as uri:
        os.environ["MLFLOW_TRACKING_URI"] = uri
        cfg = load_config(ROOT / "configs/tiny.yaml", [f"data.root={args.data}", "sync.mode=always", "sync.max_overhead=1",
                                                        "schedule.cycles=1", f"schedule.cycle_epochs={args.epochs}"])
        info = run_fold(cfg, 0, study="bench-sync")
        c = client()
        hist = {k: {m.step: m.value for m in c.get_metric_history(info.run_id, k)}
                for k in ("sync_seconds", "sync_mb", "sync_overhead", "epoch_seconds")}
        per_epoch = [hist["sync_seconds"][s] / hist["epoch_seconds"][s] for s in sorted(hist["sync_seconds"])]
        rows.append({"model": "tiny (configs/tiny.yaml, synthetic)", "mb": statistics.median(hist["sync_mb"].values()),
                     "upload_s": statistics.median(hist["sync_seconds"].values()),
                     "epoch_s": statistics.median(hist["epoch_seconds"].values()),
                     "overhead": statistics.median(per_epoch), "measured": True, "syncs": len(per_epoch)})
        epoch_s = _parse_epochs(args.epoch_s)
        for encoder, seconds in epoch_s.items():
            mcfg = load_config(ROOT / "configs/base.yaml", [f"model.encoder={encoder}", "model.weights=none"])
            model, _, _ = build_parts(mcfg)
            opt = build_optimizer(mcfg, model, 0.01)
            for p in model.parameters():
                p.grad = torch.zeros_like(p)
            opt.step()  # momentum buffers: what last.pt carries besides the weights
            scaler = torch.amp.GradScaler("cpu", enabled=False)
            path = tmp / encoder / "last.pt"
            path.parent.mkdir(parents=True)
            save_state(path, RunState(), model=model, optimizer=opt, scaler=scaler)
            mb = path.stat().st_size / 2**20
            tracker = RunTracker.start("salt/bench-sync", encoder, {"salt.role": "fold"})
            times = []
            for r in range(args.repeats):
                t0 = time.perf_counter()
                tracker.log_artifact(path, f"resume/e{r:04d}")
                times.append(time.perf_counter() - t0)
            up = statistics.median(times)
            overhead = up / seconds
            every = max(1, -(-up // (0.02 * seconds)))  # epochs between syncs under max_overhead 0.02
            rows.append({"model": encoder, "mb": mb, "upload_s": up, "all_s": times, "mb_per_s": mb / up,
                         "epoch_s": seconds, "overhead": overhead, "measured": False, "sync_every": int(every)})
    print(json.dumps(rows, indent=2))
    print("\n| model | last.pt MB | upload s | MB/s | epoch s | upload / epoch | syncs |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        rate = f"{r['mb_per_s']:.0f}" if "mb_per_s" in r else f"{r['mb'] / r['upload_s']:.0f}"
        syncs = f"every epoch ({r['syncs']} measured)" if r["measured"] else f"every {r['sync_every']} epoch(s) at 2%"
        print(f"| {r['model']} | {r['mb']:.1f} | {r['upload_s']:.2f} | {rate} | {r['epoch_s']:.1f}"
              f"{'' if r['measured'] else ' (input)'} | {100 * r['overhead']:.2f}% | {syncs} |")


if __name__ == "__main__":
    main()
