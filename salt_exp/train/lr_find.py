"""LR range test (Smith 2015, "Cyclical Learning Rates for Training Neural Networks"; the fastai
``lr_find`` procedure): train with an exponentially growing LR, record the smoothed loss, stop when
it diverges, then put the model and optimizer back exactly as they were.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from salt_exp.io import atomic_path


@dataclass(frozen=True, kw_only=True)
class LRFindResult:
    """One sweep: ``lrs[i]`` was used for step i, which produced ``raw_losses[i]``.

    ``losses`` is the bias-corrected exponential moving average of ``raw_losses``.
    ``stopped_early`` is True when the sweep ended before ``steps`` (divergence, NaN, no more
    batches); ``reason`` says why the sweep ended.
    """

    lrs: list[float]
    losses: list[float]
    raw_losses: list[float]
    suggestion: float
    stopped_early: bool
    reason: str


def _batches_forever(batches: Iterable[Any]) -> Iterator[Any]:
    """Cycle through ``batches`` (re-iterating a DataLoader gives a new epoch); stop if one pass is empty."""
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            return


def suggest_lr(lrs: list[float], losses: list[float]) -> float:
    """The LR at the steepest descent of the smoothed loss, searched before its minimum.

    Rule: take d(loss)/d(log10 lr) by finite differences, smooth it with a centred moving average
    of 5 points, and return the LR where the smoothed gradient is most negative among the points
    from two decades below the loss minimum up to the minimum (and past the first ``min(10, n // 10)``
    points, where the EMA is still warming up). The two-decade window keeps a nearly flat curve
    (short sweeps, tiny models) from suggesting the noise at its far left. When fewer than 3 points
    qualify, or the loss never descends there, fall back to (LR at the minimum loss) / 10. The
    result is clamped to ``lrs[0]``; it always lies at or below the LR of the minimum loss, hence
    below the LR where the loss diverged.
    """
    if not lrs:
        raise ValueError("no LR range test points to suggest from")
    loss = np.asarray(losses, dtype=np.float64)
    best = int(np.nanargmin(loss))
    fallback = max(lrs[0], lrs[best] / 10.0)
    lr_arr = np.asarray(lrs, dtype=np.float64)
    skip = max(min(10, len(lrs) // 10), int(np.searchsorted(lr_arr, lrs[best] / 100.0)))
    if best - skip + 1 < 3:
        return fallback
    grad = np.gradient(loss, np.log10(lr_arr))
    kernel = np.ones(5) / 5.0
    padded = np.pad(grad, 2, mode="edge")
    smooth = np.convolve(padded, kernel, mode="valid")
    window = smooth[skip : best + 1]
    steepest = skip + int(np.argmin(window))
    if not window[steepest - skip] < 0.0:
        return fallback
    return float(lrs[steepest])


def lr_range_test(
    model: torch.nn.Module,
    loss_step: Callable[[Any], torch.Tensor],
    batches: Iterable[Any],
    optimizer: torch.optim.Optimizer,
    *,
    start_lr: float,
    end_lr: float,
    steps: int,
    smooth: float = 0.98,
    diverge: float = 4.0,
    scaler: torch.amp.GradScaler | None = None,
) -> LRFindResult:
    """Sweep the LR from ``start_lr`` to ``end_lr`` over ``steps`` steps, exponentially.

    ``loss_step(batch)`` returns the scalar training loss of one batch (forward only; this function
    does ``zero_grad``, ``backward`` and ``optimizer.step``). ``batches`` is re-iterated when
    exhausted. The sweep stops once the smoothed loss exceeds ``diverge`` x its best value or a raw
    loss is not finite. Model and optimizer state (including BatchNorm buffers and momentum) are
    restored from deep copies afterwards, even on error. See :func:`suggest_lr` for the suggestion.

    ``scaler``: an enabled GradScaler (CUDA fp16 autocast) scales the loss before ``backward`` and steps
    through the scaler, as training does: unscaled fp16 gradients underflow and would skew the curve. Its
    state is restored too.
    """
    if not 0.0 < start_lr < end_lr:
        raise ValueError(f"need 0 < start_lr < end_lr, got {start_lr}, {end_lr}")
    if steps < 2 or not 0.0 <= smooth < 1.0 or diverge <= 1.0:
        raise ValueError(f"need steps >= 2, 0 <= smooth < 1, diverge > 1; got {steps}, {smooth}, {diverge}")
    model_state = copy.deepcopy(model.state_dict())
    optim_state = copy.deepcopy(optimizer.state_dict())
    scaled = scaler is not None and scaler.is_enabled()
    scaler_state = copy.deepcopy(scaler.state_dict()) if scaled else None
    was_training = model.training
    ratio = (end_lr / start_lr) ** (1.0 / (steps - 1))
    lrs: list[float] = []
    losses: list[float] = []
    raw_losses: list[float] = []
    avg, best, reason, stopped = 0.0, math.inf, f"completed {steps} steps", True
    try:
        model.train()
        stream = _batches_forever(batches)
        for i in range(steps):
            batch = next(stream, None)
            if batch is None:
                reason = f"batches ran out after {i} steps"
                break
            lr = start_lr * ratio**i
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            loss = loss_step(batch)
            if scaled:
                scaler.scale(loss).backward()
                scaler.step(optimizer)  # skipped where fp16 gradients overflowed, as in training
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            raw = float(loss.detach())  # CPU-GPU sync point, once per step: fine for a short sweep
            if not math.isfinite(raw):
                reason = f"loss became {raw} at lr={lr:.3g}"
                break
            avg = smooth * avg + (1.0 - smooth) * raw
            smoothed = avg / (1.0 - smooth ** (i + 1))
            lrs.append(lr)
            raw_losses.append(raw)
            losses.append(smoothed)
            best = min(best, smoothed)
            if smoothed > diverge * best:
                reason = f"smoothed loss {smoothed:.4g} > {diverge} x best {best:.4g} at lr={lr:.3g}"
                break
        else:
            stopped = False
    finally:
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optim_state)
        if scaled and scaler_state:
            scaler.load_state_dict(scaler_state)
        optimizer.zero_grad(set_to_none=True)
        model.train(was_training)
    if not lrs:
        raise ValueError(f"LR range test produced no points: {reason}")
    return LRFindResult(
        lrs=lrs,
        losses=losses,
        raw_losses=raw_losses,
        suggestion=suggest_lr(lrs, losses),
        stopped_early=stopped,
        reason=reason,
    )


def plot_lr_find(result: LRFindResult, path: str | Path) -> Path:
    """Write the loss-vs-LR curve (log x, suggestion marked) to ``path`` (format from its suffix)."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state is touched

    fig = Figure(figsize=(7, 4.5), layout="tight")
    ax = fig.add_subplot()
    ax.plot(result.lrs, result.raw_losses, color="0.7", linewidth=0.8, label="raw loss")
    ax.plot(result.lrs, result.losses, color="C0", linewidth=1.8, label="smoothed loss (EMA)")
    ax.axvline(result.suggestion, color="C3", linestyle="--", label=f"suggested lr = {result.suggestion:.2e}")
    finite = [x for x in result.losses if math.isfinite(x)]
    if finite and min(finite) > 0:  # keep the divergence spike from flattening the useful part of the curve
        low, first = min(finite), finite[0]
        ax.set_ylim(low - 0.05 * abs(low), max(first, low) * 1.5 + 1e-12)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss")
    ax.set_title(f"LR range test ({len(result.lrs)} steps; {result.reason})", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="best")
    dest = Path(path)
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format=dest.suffix.lstrip(".") or "png", dpi=120)
    return dest
