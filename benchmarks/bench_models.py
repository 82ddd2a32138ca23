"""Training throughput and peak memory of SaltNet variants against segmentation_models_pytorch.Unet.

One training step = forward, BCE on every output, backward, SGD step (momentum 0.9), batch 16,
128 px, 1 input channel, weights none. Each configuration runs in its own subprocess so that peak
RSS (CPU) / torch.cuda.max_memory_allocated (GPU) belong to it alone. Needs requirements-bench.txt.

    python benchmarks/bench_models.py --steps 5 --warmup 2
    python benchmarks/bench_models.py --device cuda --amp --channels-last --steps 50 --warmup 10
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

# name -> build_model toggles; "peer" is smp.Unet(decoder_attention_type="scse")
VARIANTS = {
    "salt all on": dict(scse=True, hypercolumn=True, deep_supervision=True),
    "salt scse only": dict(scse=True, hypercolumn=False, deep_supervision=False),
    "salt all off": dict(scse=False, hypercolumn=False, deep_supervision=False),
    "peer smp.Unet scse": None,
}


def build(encoder: str, variant: str) -> torch.nn.Module:
    toggles = VARIANTS[variant]
    if toggles is None:
        import segmentation_models_pytorch as smp

        return smp.Unet(encoder, encoder_weights=None, in_channels=1, classes=1, decoder_attention_type="scse")
    from salt_exp.models import build_model

    return build_model(encoder, weights="none", in_channels=1, **toggles)


def bce_all(result, y: torch.Tensor) -> torch.Tensor:
    """BCE on every output (a cheap stand-in for the real losses: the model is what is timed)."""
    if isinstance(result, torch.Tensor):  # smp returns the logits tensor
        return F.binary_cross_entropy_with_logits(result.float(), y)
    loss = F.binary_cross_entropy_with_logits(result.fused.float(), y)
    if result.seg is not None:
        loss = loss + F.binary_cross_entropy_with_logits(result.seg.float(), y)
    if result.cls is not None:
        loss = loss + F.binary_cross_entropy_with_logits(result.cls.float(), y.flatten(1).amax(1))
    return loss


def measure(
    encoder: str,
    variant: str,
    *,
    device: str,
    amp: bool,
    channels_last: bool,
    batch: int,
    size: int,
    warmup: int,
    steps: int,
) -> dict:
    torch.manual_seed(0)
    model = build(encoder, variant).to(device).train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(batch, 1, size, size, device=device).to(memory_format=fmt)
    y = (torch.rand(batch, 1, size, size, device=device) > 0.5).float()
    amp_dtype = torch.bfloat16 if device == "cpu" else torch.float16
    scaler = torch.amp.GradScaler(device, enabled=amp and device == "cuda")

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=amp_dtype, enabled=amp):
            result = model(x)
        loss = bce_all(result, y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    for _ in range(warmup):
        step()
    if device == "cuda":
        torch.cuda.synchronize()  # the timed window starts with an idle GPU
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    seconds = time.perf_counter() - start
    return {
        "encoder": encoder,
        "variant": variant,
        "images_per_s": batch * steps / seconds,
        "peak_mib": peak_mib,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }


def table(rows: list[dict]) -> str:
    peers = {r["encoder"]: r["images_per_s"] for r in rows if r["variant"].startswith("peer")}
    lines = [
        "| encoder | model | params (M) | train img/s | vs peer | peak memory (MiB) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = r["images_per_s"] / peers[r["encoder"]] if r["encoder"] in peers else float("nan")
        lines.append(
            f"| {r['encoder']} | {r['variant']} | {r['params_m']:.1f} | {r['images_per_s']:.2f} "
            f"| {ratio:.2f}x | {r['peak_mib']:.0f} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--encoders", nargs="+", default=["resnet34", "se_resnext50_32x4d"])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--amp", action="store_true", help="autocast (fp16 on cuda, bf16 on cpu)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--one", nargs=2, metavar=("ENCODER", "VARIANT"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    common = dict(
        device=args.device,
        amp=args.amp,
        channels_last=args.channels_last,
        batch=args.batch,
        size=args.size,
        warmup=args.warmup,
        steps=args.steps,
    )
    if args.one:  # child process: one configuration, JSON on the last stdout line
        print(json.dumps(measure(*args.one, **common)))
        return
    rows = []
    passthrough = list(argv if argv is not None else sys.argv[1:])
    for encoder in args.encoders:
        for variant in args.variants:
            cmd = [sys.executable, os.path.abspath(__file__), *passthrough, "--one", encoder, variant]
            done = subprocess.run(cmd, check=True, capture_output=True, text=True)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"{encoder:>20} {variant:<20} {rows[-1]['images_per_s']:8.2f} img/s", file=sys.stderr)
    print(table(rows))


if __name__ == "__main__":
    main()
