"""Training-side benchmarks (issue 4): tracking overhead, data-loading headroom, CPU precision.

    .venv/bin/python benchmarks/bench_train.py [--data data/synthetic] [--encoder resnet34] [--workers 2]
    .venv/bin/python benchmarks/bench_train.py --precision-table [--rounds 6] [--warmup 2]

1. Tracking overhead: a short fold run whose hooks are timed; overhead = time inside the MLflow
   hook (metrics, artifacts, registry) / total epoch time. Uses a throwaway SQLite store.
2. Data-loading throughput: images/s the train loader delivers alone (augmentations, collation,
   workers) against images/s the model consumes in training (from the same run).
3. CPU precision, side by side in one process (``--precision-table`` runs only this; it is part of
   the default run unless ``--no-precision-table``): the peer ``smp.Unet(encoder, scse)`` in fp32
   with Adam (its default), against the harness reference pipeline (``build_model`` with scSE,
   hypercolumn and deep supervision, ``configs/base.yaml`` decoder channels, 101 -> 128 px
   replicate padding via ``TileAdapter``, ``DeepSupervisionLoss`` bce + lovasz on the 101 crop,
   SGD momentum 0.9, the real ``engine.train_step``) in fp32 and bf16 autocast, contiguous and
   channels_last. Variants are interleaved one step at a time over ``--rounds`` rounds (order
   reversed every other round) so load on a shared machine hits them alike; images/s is the
   median over the rounds. Then ``precision.choose("auto", "auto")`` runs on the harness model
   as a training run would (uncached), and its pick and the time it took are printed. Needs
   ``requirements-bench.txt`` for the peer (without it the peer row is skipped).
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

    def init(self, cfg, fd, fold, *, workdir, hooks):
        wrapped = [TimedHook(h) for h in hooks]
        timed.extend(wrapped)
        original(self, cfg, fd, fold, workdir=workdir, hooks=wrapped)

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


# ------------------------------------------------------------------------------ CPU precision


def _peer_step(model, optimizer, images, masks, *, precision: str, channels_last: bool):
    """The peer's training step: smp.Unet on the 128 px tile, BCE on its logits, Adam."""
    import torch
    import torch.nn.functional as F

    x = images.contiguous(memory_format=torch.channels_last) if channels_last else images
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        logits = model(x)
    loss = F.binary_cross_entropy_with_logits(logits.float(), masks)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def precision_table(args: argparse.Namespace) -> None:
    import statistics

    import torch

    from salt_exp.config import load_config
    from salt_exp.data.padding import TileAdapter
    from salt_exp.losses import DeepSupervisionLoss
    from salt_exp.models import build_model
    from salt_exp.train.cpu import detect_cpu
    from salt_exp.train.engine import Runtime, train_step, training_step_fn
    from salt_exp.train.precision import Candidate, choose

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs/base.yaml", [])
    cpu = detect_cpu()
    b, size = args.batch, cfg.padding.size
    g = torch.Generator().manual_seed(0)
    tiles = torch.rand(b, 1, 101, 101, generator=g)
    masks = torch.zeros(b, 1, 101, 101)
    for i in range(b):  # a quarter empty (the cls head and the non-empty seg branch both work)
        if i % 4:
            masks[i, :, int(torch.randint(5, 95, (1,), generator=g)):, : int(torch.randint(10, 101, (1,), generator=g))] = 1
    adapter = TileAdapter("replicate", size)
    loss_fn = DeepSupervisionLoss(cfg.loss.seg_terms, cls_weight=cfg.loss.cls_weight, seg_weight=cfg.loss.seg_weight,
                                  fused_weight=cfg.loss.fused_weight)
    peer_x, peer_y = adapter.pad(tiles), adapter.pad(masks)

    def harness():
        torch.manual_seed(0)
        m = build_model(args.encoder, weights="none", in_channels=1, decoder_channels=tuple(cfg.model.decoder_channels),
                        scse=True, hypercolumn=True, deep_supervision=True).train()
        return m, torch.optim.SGD(m.parameters(), lr=1e-3, momentum=cfg.optim.momentum,
                                  weight_decay=cfg.optim.weight_decay)

    variants = []  # (name, precision, channels_last, step callable, params M)
    try:
        import segmentation_models_pytorch as smp

        torch.manual_seed(0)
        peer = smp.Unet(args.encoder, encoder_weights=None, in_channels=1, classes=1,
                        decoder_attention_type="scse").train()
        peer_opt = torch.optim.Adam(peer.parameters(), lr=1e-3)
        variants.append(("peer smp.Unet scse, Adam", "fp32", False,
                         lambda: _peer_step(peer, peer_opt, peer_x, peer_y, precision="fp32", channels_last=False),
                         sum(p.numel() for p in peer.parameters()) / 1e6))
        if args.peer_bf16:  # for reference only: the target compares against the peer's default, fp32
            variants.append(("peer smp.Unet scse, Adam", "bf16", False,
                             lambda: _peer_step(peer, peer_opt, peer_x, peer_y, precision="bf16", channels_last=False),
                             sum(p.numel() for p in peer.parameters()) / 1e6))
    except ImportError:
        print("segmentation_models_pytorch missing (pip install -r requirements-bench.txt): no peer row")
    for precision, cl in [("fp32", False), ("bf16", False), ("fp32", True), ("bf16", True)][: 4 if args.cl else 2]:
        m, opt = harness()
        rt = Runtime.for_choice("cpu", Candidate(precision, cl, torch.get_num_threads()))
        rt.prepare_model(m)

        def step(m=m, opt=opt, rt=rt):
            train_step(m, adapter, loss_fn, opt, images=rt.to_input(tiles), masks=masks, rt=rt)

        variants.append(("harness reference, SGD 0.9", precision, cl, step,
                         sum(p.numel() for p in m.parameters()) / 1e6))

    load0 = os.getloadavg()
    print(f"CPU: {cpu.describe()}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, batch {b}, {size} px, "
          f"encoder {args.encoder}; loadavg before {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}")
    times: dict[int, list[float]] = {i: [] for i in range(len(variants))}
    t_start = time.perf_counter()
    for v in variants:
        for _ in range(args.warmup):
            v[3]()
    for r in range(args.rounds):
        order = range(len(variants)) if r % 2 == 0 else reversed(range(len(variants)))
        for i in order:
            t0 = time.perf_counter()
            variants[i][3]()
            times[i].append(b / (time.perf_counter() - t0))
    table_s = time.perf_counter() - t_start
    load1 = os.getloadavg()
    med = {i: statistics.median(t) for i, t in times.items()}
    peer_ips = med[0] if variants and variants[0][0].startswith("peer") else float("nan")
    print(f"\n| model | precision | channels_last | params (M) | train img/s (median of {args.rounds}) "
          f"| min-max | vs peer fp32 |")
    print("|---|---|---|---:|---:|---:|---:|")
    for i, (name, precision, cl, _, params) in enumerate(variants):
        print(f"| {name} | {precision} | {'yes' if cl else 'no'} | {params:.1f} | {med[i]:.2f} "
              f"| {min(times[i]):.1f}-{max(times[i]):.1f} | {med[i] / peer_ips:.2f}x |")
    print(f"\ntable: {table_s:.0f} s; loadavg after {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")

    m, opt = harness()
    batch = {"image": tiles, "mask": masks}
    t0 = time.perf_counter()
    choice = choose("auto", "auto", m, training_step_fn(m, adapter, loss_fn, opt, batch=batch), optimizer=opt,
                    input_shape=tuple(tiles.shape), use_cache=False, cpu=cpu)
    choose_s = time.perf_counter() - t0
    print(f"precision.choose('auto', 'auto') picked {choice.log_line()} in {choose_s:.1f} s: {choice.reason}")
    print(f"  timings (img/s): {choice.timings_text()}")
    by_setting = {(p, cl): med[i] for i, (n, p, cl, _, _) in enumerate(variants) if n.startswith("harness")}
    picked = by_setting.get((choice.precision, choice.channels_last))
    if picked is not None and peer_ips == peer_ips:
        print(f"  harness at the auto pick, from the table: {picked:.2f} img/s = {picked / peer_ips:.2f}x the fp32 peer "
              f"(target >= 1.5x on AMX, >= 1.0x where bf16 does not pay)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="data/synthetic")
    ap.add_argument("--encoder", default="resnet34")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--precision-table", action="store_true", help="only the CPU precision table (no data needed)")
    ap.add_argument("--no-precision-table", action="store_true", help="skip the CPU precision table")
    ap.add_argument("--batch", type=int, default=16, help="precision table: batch size")
    ap.add_argument("--rounds", type=int, default=6, help="precision table: timed steps per variant, interleaved")
    ap.add_argument("--warmup", type=int, default=2, help="precision table: untimed steps per variant")
    ap.add_argument("--threads", type=int, default=0, help="precision table: torch threads (0: torch default)")
    ap.add_argument("--peer-bf16", action="store_true", help="precision table: also the peer under bf16 autocast")
    ap.add_argument("--no-cl", dest="cl", action="store_false", help="precision table: skip channels_last rows")
    args = ap.parse_args()
    if not args.precision_table:
        run(args)
    if not args.no_precision_table:
        precision_table(args)


if __name__ == "__main__":
    main()
