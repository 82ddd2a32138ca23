"""Training throughput on a GPU (issue 20, step 2 of ``benchmarks/gpu_protocol.sh``): does the CPU loader starve
the GPU?

For each encoder and batch size, at 101 -> 128 replicate padding with the reference pipeline's model and loss
(``configs/base.yaml``; fp16 AMP + channels_last on CUDA, the GradScaler as training uses it):
- ``model_img_s``: training steps on one batch already on the device (the model alone);
- ``loader_img_s``: the training loader alone (augmentations, collation, ``--workers`` processes);
- ``train_img_s``: the two together, as a fold run trains, with the GPU's utilisation sampled by nvml meanwhile.
The loader starves the GPU where ``loader_img_s`` < ``model_img_s``: ``train_img_s`` then follows the loader.
Each row is appended to ``--out`` (JSON) as soon as it is measured, so a timeout keeps what was done.

    python3 benchmarks/bench_gpu.py --data /tmp/tgs --out $OUT/throughput.json [--workers 8]
    .venv/bin/python benchmarks/bench_gpu.py --data data/synthetic --smoke   (CPU: a tiny run of the same code)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


class GpuSampler:
    """GPU utilisation (%) and memory (GiB) every ``interval`` s through nvml while in the ``with`` block."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval, self.util, self.mem, self._stop = interval, [], [], threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml, self._handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:  # noqa: BLE001 - no driver or no nvidia-ml-py: no samples
            self._nvml = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.util.append(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)
            self.mem.append(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used / 2**30)

    def __enter__(self) -> GpuSampler:
        if self._nvml is not None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._nvml is not None:
            self._thread.join()


def measure(cfg, steps: int, warmup: int) -> dict:
    import torch

    from salt_exp.train.engine import Runtime, train_step
    from salt_exp.train.setup import build_optimizer, build_parts, load_fold, train_loader

    fd = load_fold(cfg, 0)
    model, adapter, loss_fn = build_parts(cfg)
    cuda = torch.cuda.is_available() and cfg.train.device != "cpu"
    rt = Runtime.resolve("cuda" if cuda else "cpu", amp=cuda, channels_last=cuda)
    rt.prepare_model(model)
    model.train()
    optimizer, scaler = build_optimizer(cfg, model, 0.01), rt.grad_scaler()
    bs = cfg.optim.batch_size

    def step(batch) -> None:
        images, masks = rt.to_input(batch["image"]), batch["mask"].to(rt.device)
        train_step(model, adapter, loss_fn, optimizer, images=images, masks=masks, rt=rt, scaler=scaler)

    loader = train_loader(cfg, fd, 0)
    first = next(iter(loader))
    for _ in range(warmup):
        step(first)
    _sync(rt.device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step(first)
    _sync(rt.device)
    model_s = (time.perf_counter() - t0) / steps

    t0, n = time.perf_counter(), 0
    for i, _batch in enumerate(train_loader(cfg, fd, 1)):
        if i == 0:
            t0 = time.perf_counter()  # the workers' start-up is not throughput
        n = i
        if i >= steps:
            break
    loader_s = (time.perf_counter() - t0) / max(n, 1)

    with GpuSampler() as gpu:
        t0, n = time.perf_counter(), 0
        for i, batch in enumerate(train_loader(cfg, fd, 2)):
            if i == warmup:
                _sync(rt.device)
                t0 = time.perf_counter()
            step(batch)
            n = i
            if i >= steps + warmup:
                break
        _sync(rt.device)
        train_s = (time.perf_counter() - t0) / max(n - warmup, 1)
    return {"model_img_s": bs / model_s, "loader_img_s": bs / loader_s, "train_img_s": bs / train_s,
            "gpu_util_mean": statistics.fmean(gpu.util) if gpu.util else None,
            "gpu_mem_gib_max": max(gpu.mem) if gpu.mem else None,
            "loader_starves_gpu": loader_s > model_s, "precision": rt.precision, "device": str(rt.device)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", default="throughput.json")
    p.add_argument("--encoders", default="resnet34,se_resnext50_32x4d")
    p.add_argument("--batches", default="16,64")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--smoke", action="store_true", help="CPU: a tiny encoder and a few steps (tests the script)")
    args = p.parse_args(argv)
    from salt_exp.config import load_config

    encoders, batches = args.encoders.split(","), [int(b) for b in args.batches.split(",")]
    steps, warmup = args.steps, 5
    extra = []
    if args.smoke:
        encoders, batches, steps, warmup = ["timm/resnet10t"], [4], 2, 1
        extra = ["model.decoder_channels=[8,8,8,8,8]", "train.device=cpu"]
    rows = []
    out = Path(args.out)
    for encoder in encoders:
        for bs in batches:
            cfg = load_config(REPO / "configs" / "base.yaml",
                              [f"data.root={args.data}", f"model.encoder={encoder}", f"optim.batch_size={bs}",
                               f"train.workers={args.workers}", "model.weights=none", *extra])
            row = {"encoder": encoder, "batch": bs, "workers": args.workers, **measure(cfg, steps, warmup)}
            rows.append(row)
            out.write_text(json.dumps(rows, indent=1))
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
