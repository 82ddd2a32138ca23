"""The training step, the epoch loop and prediction: pure torch, no tracking.

Shapes: loaders yield ``{"image": (B, C, 101, 101) float in [0, 1], "mask": (B, 1, 101, 101) 0/1}``;
the ``TileAdapter`` pads to the model size and crops the logits back to 101 before the loss,
so loss and metric never see padded pixels.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from salt_exp.data.padding import TileAdapter
from salt_exp.models.unet import SaltOutput
from salt_exp.train.schedule import CosineCycles

LossFn = Callable[[SaltOutput, torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite; the message says where."""


@dataclass(frozen=True)
class Runtime:
    """Where and how tensors run: device, autocast, memory format."""

    device: torch.device
    amp: bool
    channels_last: bool

    @classmethod
    def resolve(cls, device: str, amp: bool, channels_last: bool) -> Runtime:
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dev = torch.device(device)
        on_cuda = dev.type == "cuda"
        return cls(dev, amp and on_cuda, channels_last and on_cuda)  # both only pay off on CUDA

    def to_input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.float16 if self.device.type == "cuda" else torch.bfloat16,
                              enabled=self.amp)


def forward_cropped(model: torch.nn.Module, adapter: TileAdapter, images: torch.Tensor) -> SaltOutput:
    """Pad (B, C, 101, 101) -> model -> logits cropped back to (B, 1, 101, 101)."""
    return model(adapter.pad(images)).map_spatial(adapter.crop)


@dataclass(frozen=True)
class EpochStats:
    loss: float
    images: int
    seconds: float
    next_step: int


def train_epoch(model: torch.nn.Module, adapter: TileAdapter, loss_fn: LossFn, batches: Iterable[dict],
                optimizer: torch.optim.Optimizer, schedule: CosineCycles, step: int, rt: Runtime,
                scaler: torch.amp.GradScaler, grad_clip: float | None = None, desc: str = "train") -> EpochStats:
    """One pass over ``batches`` with a per-batch LR from ``schedule`` starting at global ``step``."""
    model.train()
    total, seen, start = 0.0, 0, time.perf_counter()
    bar = tqdm(batches, desc=desc, leave=False, disable=None, mininterval=2.0)
    for batch in bar:
        lr = schedule.apply(optimizer, min(step, schedule.total_steps - 1))
        images, masks = rt.to_input(batch["image"]), batch["mask"].to(rt.device, non_blocking=True)
        with rt.autocast():
            loss, _ = loss_fn(forward_cropped(model, adapter, images), masks)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
        value = float(loss.detach())  # CPU-GPU sync point, once per batch: needed for the NaN check
        if not math.isfinite(value):
            raise NonFiniteLoss(f"training loss became {value} at step {step} (lr={lr:.3g})")
        total += value * len(images)
        seen += len(images)
        step += 1
        bar.set_postfix(loss=f"{total / seen:.4f}", lr=f"{lr:.2e}", refresh=False)
    return EpochStats(total / max(seen, 1), seen, time.perf_counter() - start, step)


@torch.no_grad()
def predict(model: torch.nn.Module, adapter: TileAdapter, batches: Iterable[dict], rt: Runtime,
            loss_fn: LossFn | None = None, hflip_tta: bool = False) -> tuple[np.ndarray, float]:
    """Salt probabilities (N, 101, 101) float32 of the fused output, and the mean loss when asked.

    With ``hflip_tta`` the logits of the horizontally flipped tiles (flipped back) are averaged in.
    """
    model.eval()
    probs, total, seen = [], 0.0, 0
    for batch in batches:
        images = rt.to_input(batch["image"])
        with rt.autocast():
            out = forward_cropped(model, adapter, images)
            logits = out.fused.float()
            if hflip_tta:
                flipped = forward_cropped(model, adapter, torch.flip(images, dims=[3])).fused.float()
                logits = 0.5 * (logits + torch.flip(flipped, dims=[3]))
            if loss_fn is not None:
                loss, _ = loss_fn(out, batch["mask"].to(rt.device))
                total += float(loss) * len(images)
        seen += len(images)
        probs.append(torch.sigmoid(logits)[:, 0].cpu().numpy())
    return np.concatenate(probs).astype(np.float32), total / max(seen, 1)
