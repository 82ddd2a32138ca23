"""Cosine annealing with warm restarts, updated every batch (SGDR, Loshchilov & Hutter 2017).

The reference pipeline anneals from the max LR to ``min_lr`` over each 50-epoch cycle and restarts
10 times, saving the best epoch of each cycle. The LR is a pure function of the global step
(``epoch * steps_per_epoch + batch``), so a resumed run needs nothing but its step number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from salt_exp.config import ScheduleConfig


@dataclass(frozen=True, kw_only=True)
class CosineCycles:
    """``cycles`` cosine cycles of ``steps_per_cycle`` steps each, from ``max_lr`` down to ``min_lr``.

    Within a cycle the LR falls monotonically from ``max_lr`` (its first step) to exactly ``min_lr``
    (its last step); the next cycle restarts at ``max_lr``. With ``warmup_steps`` = W > 0 the first
    cycle instead rises linearly from ``min_lr`` at step 0 towards ``max_lr``, reaching it at step W,
    and anneals over its remaining steps.
    """

    max_lr: float
    min_lr: float
    cycles: int
    steps_per_cycle: int
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_lr <= self.max_lr:
            raise ValueError(f"need 0 <= min_lr <= max_lr, got min_lr={self.min_lr}, max_lr={self.max_lr}")
        if self.cycles < 1 or self.steps_per_cycle < 1:
            raise ValueError(f"need cycles >= 1 and steps_per_cycle >= 1, got {self.cycles}, {self.steps_per_cycle}")
        if not 0 <= self.warmup_steps < self.steps_per_cycle:
            raise ValueError(f"need 0 <= warmup_steps < steps_per_cycle, got {self.warmup_steps}")

    @property
    def total_steps(self) -> int:
        return self.cycles * self.steps_per_cycle

    def _check(self, step: int) -> None:
        if not 0 <= step < self.total_steps:
            raise ValueError(f"step {step} outside the schedule [0, {self.total_steps})")

    def cycle_of(self, step: int) -> int:
        """0-based cycle index of a global step."""
        self._check(step)
        return step // self.steps_per_cycle

    def is_cycle_end(self, step: int) -> bool:
        """True on the last step of a cycle (where the LR reaches ``min_lr``): snapshot time."""
        self._check(step)
        return (step + 1) % self.steps_per_cycle == 0

    def lr_at(self, step: int) -> float:
        """The learning rate for global ``step`` (0-based), a pure function of the step."""
        self._check(step)
        pos = step % self.steps_per_cycle
        first = step < self.steps_per_cycle
        if first and pos < self.warmup_steps:
            return self.min_lr + (self.max_lr - self.min_lr) * pos / self.warmup_steps
        start = self.warmup_steps if first else 0
        span = self.steps_per_cycle - start - 1  # steps from max_lr to min_lr
        if span <= 0:
            return self.max_lr
        progress = (pos - start) / span
        return self.min_lr + 0.5 * (self.max_lr - self.min_lr) * (1.0 + math.cos(math.pi * progress))

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set the LR of every param group for ``step`` and return it.

        A group with an ``lr_scale`` entry (e.g. a slower encoder) gets ``lr * lr_scale``.
        """
        lr = self.lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr


def cosine_cycles(schedule_cfg: ScheduleConfig, max_lr: float, steps_per_epoch: int) -> CosineCycles:
    """The schedule of a config section, for a known max LR (e.g. from the LR range test)."""
    return CosineCycles(
        max_lr=max_lr,
        min_lr=min(schedule_cfg.min_lr, max_lr),
        cycles=schedule_cfg.cycles,
        steps_per_cycle=schedule_cfg.cycle_epochs * steps_per_epoch,
        warmup_steps=schedule_cfg.warmup_epochs * steps_per_epoch,
    )
