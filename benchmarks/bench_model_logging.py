"""What logging one cycle snapshot as an MLflow model costs (issue 16), side by side in one process:

- ``salt`` : the harness's path (``tracking.models.log_pyfunc_model``: pyfunc from code, pinned requirements,
  the package copied into ``code/``, upload, READY) plus the registry version;
- ``pytorch``: ``mlflow.pytorch.log_model(model, name=..., serialization_format="pickle")`` otherwise with its
  defaults (requirement inference; 3.17's default pt2 format needs an input example), for scale;
- ``artifact``: the pre-issue-16 path, the checkpoint uploaded as a plain run artifact.

Each against a fresh SQLite store in a temp folder, the same checkpoint, ``--repeats`` times (median printed).

    .venv/bin/python benchmarks/bench_model_logging.py [--encoder resnet34] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--encoder", default="resnet34")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-pytorch", action="store_true", help="leave out mlflow.pytorch.log_model (slow)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-model-logging-"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import logging

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    import mlflow
    import torch

    from salt_exp.config import load_config, to_dict
    from salt_exp.serving.pyfunc import WEIGHTS_ARTIFACT, signature
    from salt_exp.tracking import RunTracker
    from salt_exp.tracking.models import code_file, log_pyfunc_model
    from salt_exp.train.setup import build_parts

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / "configs/base.yaml", [f"model.encoder={args.encoder}", "model.weights=none"])
    model, _, _ = build_parts(cfg)
    ckpt = tmp / "cycle0_epoch0.pt"
    torch.save({"state_dict": model.state_dict(), "config": to_dict(cfg)}, ckpt)
    size_mb = ckpt.stat().st_size / 2**20
    times: dict[str, list[float]] = {"salt": [], "artifact": [], "pytorch": []}
    for r in range(args.repeats):
        tracker = RunTracker.start("salt/bench-logging", f"r{r}", {"salt.role": "fold"})
        t0 = time.perf_counter()
        mid = log_pyfunc_model(tracker.run_id, name="fold0-cycle0", key="cycle_0", code=code_file("snapshot_model"),
                               artifacts={WEIGHTS_ARTIFACT: ckpt}, signature=signature("snapshot"),
                               model_type="salt-snapshot", step=0)
        tracker.register_version("salt-bench", "", {"cycle": 0}, model_id=mid)
        times["salt"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        tracker.log_artifact(ckpt, "snapshots/cycle_0")
        times["artifact"].append(time.perf_counter() - t0)
        if not args.skip_pytorch:
            with mlflow.start_run(run_id=tracker.run_id), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t0 = time.perf_counter()
                mlflow.pytorch.log_model(model, name=f"pytorch-{r}", serialization_format="pickle")
                times["pytorch"].append(time.perf_counter() - t0)
        tracker.end("FINISHED")
    print(f"checkpoint: {args.encoder} UNet, {size_mb:.1f} MiB; {args.repeats} repeats, median seconds per snapshot")
    print("| path | s per snapshot (median) | all |")
    print("| --- | --- | --- |")
    for name, ts in times.items():
        if ts:
            print(f"| {name} | {statistics.median(ts):.2f} | {', '.join(f'{t:.2f}' for t in ts)} |")


if __name__ == "__main__":
    main()
