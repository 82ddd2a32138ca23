"""Time-budgeted training (``schedule.budget_minutes``): fit the cosine cycles to the epochs that fit.

A budgeted fold run times a few training steps and one validation batch after the LR finder, plans
``cycles`` cycles of as many whole epochs as fit in what is left of the budget (fewer cycles of one
epoch when not even that fits), then re-estimates an epoch's wall time from the epochs it has run and
stops before one that would overrun the budget. The plan lives in the run state
(:class:`~salt_exp.train.state.BudgetPlan`): a resumed run keeps its schedule and its spent time.
"""

from __future__ import annotations

import statistics
import time

import torch

from salt_exp.data.padding import TileAdapter
from salt_exp.train.engine import LossFn, Runtime, predict, train_step
from salt_exp.train.precision import preserved
from salt_exp.train.state import BudgetPlan

PROBE_STEPS = 3  # timed training steps, after one untimed warm-up step


def plan_cycles(*, budget_s: float, used_s: float, epoch_s: float, cycles: int) -> tuple[int, int, str]:
    """(cycles, cycle_epochs, note): ``cycles`` cycles of the most whole epochs of ``epoch_s`` seconds that
    fit in the budget left, at least one epoch each; fewer one-epoch cycles (and a note) when they do not fit."""
    left = max(budget_s - used_s, 0.0)
    fit = int(left // max(epoch_s, 1e-9))
    if fit >= cycles:
        return cycles, fit // cycles, ""
    if fit >= 1:
        return fit, 1, (f"only {fit} epoch(s) of ~{epoch_s:.1f}s fit in the {left:.0f}s left of the budget: "
                        f"{fit} cycle(s) of 1 epoch instead of {cycles}")
    return 1, 1, (f"not even one epoch (~{epoch_s:.1f}s) fits in the {left:.0f}s left of the budget: "
                  "1 cycle of 1 epoch, trained anyway")


def should_stop(plan: BudgetPlan, epoch: int) -> bool:
    """Before ``epoch``: True when the next epoch's estimated wall time would overrun the budget.

    The first epoch always trains (a run without an epoch has no snapshot); a run that stopped stays stopped.
    """
    if plan.stopped:
        return True
    return epoch > 0 and plan.used_s + plan.epoch_s > plan.budget_s


def probe_seconds(model: torch.nn.Module, adapter: TileAdapter, loss_fn: LossFn, optimizer: torch.optim.Optimizer, *,
                  batch: dict, rt: Runtime, scaler: torch.amp.GradScaler, grad_clip: float | None) -> tuple[float, float]:
    """(seconds per training step, seconds per validated image), timed on ``batch``. The model, optimizer,
    scaler and random states are restored afterwards: the run trains as if nothing had been timed."""
    images, masks = rt.to_input(batch["image"]), batch["mask"].to(rt.device)
    with preserved(model, optimizer, scaler):
        model.train()
        times = []
        for _ in range(PROBE_STEPS + 1):
            t0 = time.perf_counter()
            float(train_step(model, adapter, loss_fn, optimizer, images=images, masks=masks, rt=rt, scaler=scaler,
                             grad_clip=grad_clip))  # float(): waits for the device
            times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with torch.no_grad():
            predict(model, adapter, [batch], rt, loss_fn=loss_fn)
        per_image = (time.perf_counter() - t0) / max(len(images), 1)
    return statistics.median(times[1:]), per_image
