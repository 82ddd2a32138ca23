"""Time-budgeted training (``schedule.budget_minutes``): fit the cosine cycles to the epochs that fit.

A budgeted fold run times a few training steps and one validation batch after the LR finder, plans
``cycles`` cycles of whole epochs that fill what is left of the budget, shortening every epoch to the
batches that fit (fewer cycles when not even quarter-pass epochs fit), then re-estimates an epoch's wall
time per batch from the epochs it has run and re-plans the length of the epochs left (:func:`replan`; whole
cycles are added when full-pass epochs leave room for them), and stops before one that would end more than 3%
past the budget. The plan lives in the run state
(:class:`~salt_exp.train.state.BudgetPlan`): a resumed run keeps its schedule and its spent time.
"""

from __future__ import annotations

import itertools
import math
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from salt_exp.data.padding import TileAdapter
from salt_exp.train.engine import LossFn, Runtime, predict, train_step
from salt_exp.train.precision import preserved
from salt_exp.train.state import BudgetPlan

PROBE_WARMUP = 2  # untimed training steps first (loader workers starting, first-call allocations)
PROBE_STEPS = 6  # then timed ones, each with its batch's loading


PLAN_FILL = 0.97  # plan this share of the budget left: the estimate is a few batches' timing
MIN_EPOCH_SHARE = 0.25  # a budgeted epoch trains at least this share of a full pass (else fewer cycles)
OVERRUN = 0.03  # an epoch may end this share of the budget past it (timing noise), not more
ROUND_DOWN = 0.1  # a cycle drops a started epoch when less than this share of it would fit


@dataclass(frozen=True)
class CyclePlan:
    cycles: int
    cycle_epochs: int
    epoch_steps: int  # training batches per planned epoch (<= a full pass over the fold's training tiles)
    note: str = ""


def min_epoch_steps(steps_per_epoch: int) -> int:
    """The shortest budgeted epoch: ``MIN_EPOCH_SHARE`` of a full pass, at least one batch."""
    return min(steps_per_epoch, max(1, math.ceil(MIN_EPOCH_SHARE * steps_per_epoch)))


def plan_cycles(*, budget_s: float, used_s: float, step_s: float, steps_per_epoch: int, val_s: float,
                cycles: int) -> CyclePlan:
    """Fit ``cycles`` cosine cycles to the budget left: each cycle of whole epochs, each epoch a pass over at
    most every training batch, validated at its end; epochs are shortened (never lengthened) so that the
    planned training fills the budget instead of leaving up to a cycle's worth of it unused.

    Fewer cycles (and a note) when even epochs of a quarter pass would not fit ``cycles`` of them.
    """
    left = max(budget_s - used_s, 0.0) * PLAN_FILL
    full_s = steps_per_epoch * step_s + val_s
    min_steps = min_epoch_steps(steps_per_epoch)
    min_epoch_s = min_steps * step_s + val_s
    n, note = cycles, ""
    if left < cycles * min_epoch_s:
        n = max(1, int(left // min_epoch_s))
        note = (f"only {n} epoch(s) of >= {min_steps} batches fit in the {left:.0f}s planned: {n} cycle(s) of "
                f"1 epoch instead of {cycles}" if left >= min_epoch_s else
                f"not even one epoch of {min_steps} batches (~{min_epoch_s:.1f}s) fits in the {left:.0f}s left: "
                "1 cycle of 1 epoch, trained anyway")
    cycle_epochs = max(1, math.ceil(left / max(full_s, 1e-9) / n - ROUND_DOWN))
    per_epoch = left / (n * cycle_epochs) - val_s
    epoch_steps = int(min(steps_per_epoch, max(min_steps, per_epoch / max(step_s, 1e-9))))
    return CyclePlan(n, cycle_epochs, epoch_steps, note)


def replan(plan: BudgetPlan, epochs_done: int) -> None:
    """Before epoch ``epochs_done`` (>= 1): the epochs left, shortened or lengthened (up to a pass) to the
    batches that fit in 97% of the budget left at the measured wall time per batch. Cycles and epochs per
    cycle stay: the LR follows each epoch's share of its cycle (``FoldTrainer``), whatever its length, so a
    first-batch timing that was off by a quarter costs no cycle its low-LR end.

    When even full-pass epochs leave room for whole cycles more (the first batches were timed on a busy
    machine, say, and planned a third of what fits), those cycles are added after the planned ones
    (:func:`extra_cycles`); the cycles already running keep their length and LR."""
    left_epochs = plan.epochs - epochs_done
    if left_epochs <= 0 or not plan.epoch_wall_s:
        return
    left = max(plan.budget_s - plan.used_s, 0.0) * PLAN_FILL
    min_steps = min_epoch_steps(plan.steps_per_epoch)
    fit = (left / left_epochs - plan.val_s) / max(plan.rate_s, 1e-9)
    plan.epoch_steps = int(min(plan.steps_per_epoch, max(min_steps, fit)))
    more = extra_cycles(plan, left, left_epochs)
    if more:
        note = (f"+{more} cycle(s) after epoch {epochs_done}: full-pass epochs left "
                f"{left - left_epochs * plan.epoch_s:.0f}s of the budget unused at the measured "
                f"{plan.rate_s:.3f}s/batch (planned at {plan.step_s:.3f}s/step)")
        plan.cycles += more
        plan.note = f"{plan.note}; {note}" if plan.note else note
        replan(plan, epochs_done)  # the longer plan's epochs fitted again (never shorter than a quarter pass)


def extra_cycles(plan: BudgetPlan, left: float, left_epochs: int) -> int:
    """How many whole cycles of ``cycle_epochs`` full-pass epochs fit in what ``left_epochs`` full-pass epochs
    leave of ``left`` seconds; 0 unless the epochs left already train a full pass each."""
    if plan.epoch_steps < plan.steps_per_epoch:
        return 0
    full_epoch_s = plan.steps_per_epoch * plan.rate_s + plan.val_s
    spare = left - left_epochs * full_epoch_s
    return max(0, int(spare // (plan.cycle_epochs * max(full_epoch_s, 1e-9))))


def should_stop(plan: BudgetPlan, epoch: int) -> bool:
    """Before ``epoch``: True when the next epoch, at its estimated wall time, would end more than
    ``OVERRUN`` of the budget past it (a plan filling 97% of it is not cut one epoch short by noise).

    The first epoch always trains (a run without an epoch has no snapshot); a run that stopped stays stopped.
    """
    if plan.stopped:
        return True
    return epoch > 0 and plan.used_s + plan.epoch_s > plan.budget_s * (1.0 + OVERRUN)


def probe_seconds(model: torch.nn.Module, adapter: TileAdapter, loss_fn: LossFn, optimizer: torch.optim.Optimizer, *,
                  batches: Iterable[dict], rt: Runtime, scaler: torch.amp.GradScaler,
                  grad_clip: float | None) -> tuple[float, float]:
    """(seconds per training step, seconds per validated image), timed on ``batches``: a training loader, so
    that a step's time holds its batch's loading and augmentation (on 2 cores the loader workers compete with
    the model for them). The model, optimizer, scaler and random states are restored afterwards: the run
    trains as if nothing had been timed."""
    source = itertools.cycle(batches)  # a loader shorter than the probe (tests) comes round again
    with preserved(model, optimizer, scaler):
        model.train()
        times, first = [], None
        for _ in range(PROBE_WARMUP + PROBE_STEPS):
            t0 = time.perf_counter()
            batch = next(source)
            first = first or batch
            images, masks = rt.to_input(batch["image"]), batch["mask"].to(rt.device)
            float(train_step(model, adapter, loss_fn, optimizer, images=images, masks=masks, rt=rt, scaler=scaler,
                             grad_clip=grad_clip))  # float(): waits for the device
            times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with torch.no_grad():
            predict(model, adapter, [first], rt, loss_fn=loss_fn)
        per_image = (time.perf_counter() - t0) / max(len(first["image"]), 1)
    return statistics.fmean(times[PROBE_WARMUP:]), per_image
