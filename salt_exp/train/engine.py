"""The training step, the epoch loop and prediction: pure torch, no tracking.

Shapes: loaders yield ``{"image": (B, C, 101, 101) float in [0, 1], "mask": (B, 1, 101, 101) 0/1}``;
the ``TileAdapter`` pads to the model size and crops the logits back to 101 before the loss,
so loss and metric never see padded pixels.

Precision: a :class:`Runtime` carries the autocast dtype (None = fp32; bf16 on CPU where
:func:`salt_exp.train.precision.choose` measured it faster; fp16 + GradScaler on CUDA) and the
memory format. :func:`choose_runtime` makes that choice for a run (timing the real
:func:`train_step`), and training, validation and test prediction all go through the same runtime.
Losses are computed in fp32 (see :mod:`salt_exp.losses`), predictions are returned as float32.
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
from salt_exp.train.precision import Candidate, PrecisionChoice, StepFn, choose, resolve_device
from salt_exp.train.schedule import CosineCycles

LossFn = Callable[[SaltOutput, torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite; the message says where."""


@dataclass(frozen=True)
class Runtime:
    """Where and how tensors run: device, autocast dtype (None: fp32), memory format.

    ``Runtime.resolve(device, amp, channels_last)`` is the CUDA-only rule (fp16 AMP and channels_last
    on CUDA, plain fp32 on CPU); ``Runtime.for_choice(device, choice)`` takes a
    :class:`salt_exp.train.precision.PrecisionChoice` (bf16 autocast on CPU where it was chosen).
    """

    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool

    def __post_init__(self) -> None:
        if isinstance(self.amp_dtype, bool):  # the old Runtime(device, amp: bool, channels_last) form
            dtype = (torch.float16 if self.device.type == "cuda" else torch.bfloat16) if self.amp_dtype else None
            object.__setattr__(self, "amp_dtype", dtype)

    @classmethod
    def resolve(cls, device: str, amp: bool, channels_last: bool) -> Runtime:
        dev = resolve_device(device)
        on_cuda = dev.type == "cuda"
        return cls(dev, torch.float16 if amp and on_cuda else None, channels_last and on_cuda)

    @classmethod
    def for_choice(cls, device: str | torch.device, choice: PrecisionChoice | Candidate) -> Runtime:
        """The runtime of a measured (or requested) precision choice on ``device`` (``auto`` allowed)."""
        return cls(resolve_device(device), choice.amp_dtype, choice.channels_last)

    @property
    def amp(self) -> bool:
        """Autocast is on (fp16 on CUDA, or bf16)."""
        return self.amp_dtype is not None

    @property
    def needs_scaler(self) -> bool:
        """Only fp16 needs loss scaling; bf16 has fp32's exponent range."""
        return self.amp_dtype == torch.float16

    @property
    def precision(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype]

    def grad_scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device.type, enabled=self.needs_scaler)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """Move ``model`` to the device and memory format of this runtime (in place; returned too)."""
        model.to(self.device)
        return model.to(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)

    def to_input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def autocast(self) -> torch.autocast:
        default = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        return torch.autocast(self.device.type, dtype=self.amp_dtype or default, enabled=self.amp)


def forward_cropped(model: torch.nn.Module, adapter: TileAdapter, images: torch.Tensor) -> SaltOutput:
    """Pad (B, C, 101, 101) -> model -> logits cropped back to (B, 1, 101, 101); a context canvas (B, C, S, S) goes
    in as it is."""
    return model(adapter.pad(images)).map_spatial(adapter.crop)


@dataclass(frozen=True)
class EpochStats:
    loss: float
    images: int
    seconds: float
    next_step: int


def train_step(model: torch.nn.Module, adapter: TileAdapter, loss_fn: LossFn, optimizer: torch.optim.Optimizer, *,
               images: torch.Tensor, masks: torch.Tensor, rt: Runtime, scaler: torch.amp.GradScaler | None = None,
               grad_clip: float | None = None) -> torch.Tensor:
    """One optimisation step on a batch already on the device: forward under autocast, loss (fp32),
    backward, optional clipping, optimizer step. Returns the detached fp32 loss."""
    with rt.autocast():
        loss, _ = loss_fn(forward_cropped(model, adapter, images), masks)
    loss = loss.float()
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None and scaler.is_enabled():
        scaler.scale(loss).backward()
        if grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
    return loss.detach()


def train_epoch(model: torch.nn.Module, adapter: TileAdapter, loss_fn: LossFn, batches: Iterable[dict], *,
                optimizer: torch.optim.Optimizer, schedule: CosineCycles, step: int, rt: Runtime,
                scaler: torch.amp.GradScaler | None = None, grad_clip: float | None = None,
                desc: str = "train") -> EpochStats:
    """One pass over ``batches`` with a per-batch LR from ``schedule`` starting at global ``step``.

    ``scaler`` defaults to ``rt.grad_scaler()`` semantics: pass the run's scaler (its state is saved).
    """
    model.train()
    total, seen, start = 0.0, 0, time.perf_counter()
    bar = tqdm(batches, desc=desc, leave=False, disable=None, mininterval=2.0)
    for batch in bar:
        lr = schedule.apply(optimizer, min(step, schedule.total_steps - 1))
        images, masks = rt.to_input(batch["image"]), batch["mask"].to(rt.device, non_blocking=True)
        loss = train_step(model, adapter, loss_fn, optimizer, images=images, masks=masks, rt=rt, scaler=scaler,
                          grad_clip=grad_clip)
        value = float(loss)  # CPU-GPU sync point, once per batch: needed for the NaN check
        if not math.isfinite(value):
            raise NonFiniteLoss(f"training loss became {value} at step {step} (lr={lr:.3g})")
        total += value * len(images)
        seen += len(images)
        step += 1
        bar.set_postfix(loss=f"{total / seen:.4f}", lr=f"{lr:.2e}", refresh=False)
    return EpochStats(total / max(seen, 1), seen, time.perf_counter() - start, step)


def training_step_fn(model: torch.nn.Module, adapter: TileAdapter, loss_fn: LossFn, optimizer: torch.optim.Optimizer,
                     *, batch: dict, device: str | torch.device = "cpu", grad_clip: float | None = None) -> StepFn:
    """``step(candidate) -> images``: the real :func:`train_step` on ``batch`` in that setting, for
    :func:`salt_exp.train.precision.choose` to time (which restores model and optimizer afterwards)."""
    images, masks = batch["image"], batch["mask"]

    def step(cand: Candidate) -> int:
        rt = Runtime.for_choice(device, cand)
        model.train()
        train_step(model, adapter, loss_fn, optimizer, images=rt.to_input(images), masks=masks.to(rt.device), rt=rt,
                   grad_clip=grad_clip)
        return len(images)

    return step


def prediction_step_fn(model: torch.nn.Module, adapter: TileAdapter, batch: dict, *, device: str | torch.device = "cpu",
                       hflip_tta: bool = False) -> StepFn:
    """``step(candidate) -> images``: an eval-mode forward pass (with the h-flip view when asked), for
    choosing the precision of prediction alone (ensemble / test prediction, ``purpose="predict"``)."""
    images = batch["image"]

    def step(cand: Candidate) -> int:
        rt = Runtime.for_choice(device, cand)
        model.eval()
        with torch.no_grad(), rt.autocast():
            x = rt.to_input(images)
            forward_cropped(model, adapter, x)
            if hflip_tta:
                forward_cropped(model, adapter, adapter.hflip(x))
        return len(images)

    return step


def choose_runtime(model: torch.nn.Module, adapter: TileAdapter, *, device: str, precision: str,
                   channels_last: bool | str, amp: bool, batch: dict | None, loss_fn: LossFn | None = None,
                   optimizer: torch.optim.Optimizer | None = None, grad_clip: float | None = None,
                   hflip_tta: bool = False, **choose_kwargs) -> tuple[Runtime, PrecisionChoice]:
    """Choose the precision of a run and build its Runtime; the model is moved to its device and layout.

    With ``loss_fn`` and ``optimizer`` the real training step is timed (``purpose="train"``), else a
    prediction pass (``purpose="predict"``). ``batch`` (a loader batch, on CPU) is only used when
    something must be timed; ``choose_kwargs`` go to :func:`salt_exp.train.precision.choose`
    (``cache_dir``, ``requested_threads``, ``warmup``, ``steps``, ``use_cache``, ...).
    """
    device = resolve_device(device)
    model.to(device)
    training = loss_fn is not None and optimizer is not None
    step_fn = None
    if batch is not None:
        step_fn = (training_step_fn(model, adapter, loss_fn, optimizer, batch=batch, device=device, grad_clip=grad_clip)
                   if training else prediction_step_fn(model, adapter, batch, device=device, hflip_tta=hflip_tta))
    shape = tuple(batch["image"].shape) if batch is not None else None
    choice = choose(precision, channels_last, model, step_fn, optimizer=optimizer if training else None,
                    device=device, amp=amp, input_shape=shape, purpose="train" if training else "predict",
                    **choose_kwargs)
    rt = Runtime.for_choice(device, choice)
    rt.prepare_model(model)
    return rt, choice


@torch.no_grad()
def predict(model: torch.nn.Module, adapter: TileAdapter, batches: Iterable[dict], rt: Runtime, *,
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
                flipped = forward_cropped(model, adapter, adapter.hflip(images)).fused.float()
                logits = 0.5 * (logits + torch.flip(flipped, dims=[3]))
            if loss_fn is not None:
                loss, _ = loss_fn(out, batch["mask"].to(rt.device))
                total += float(loss) * len(images)
        seen += len(images)
        probs.append(torch.sigmoid(logits)[:, 0].cpu().numpy())
    return np.concatenate(probs).astype(np.float32), total / max(seen, 1)
