"""Hooks: what a fold run tells the outside world, as typed events; tracking and pruning are hooks.

A hook overrides the events it cares about; :class:`HookBase` gives every other event a no-op.
Events are replayed when a run resumes, so hooks must be idempotent (the MLflow hook skips what
the store already holds).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from salt_exp.contract import FoldStatus
from salt_exp.train.lr_find import LRFindResult
from salt_exp.train.precision import PrecisionChoice
from salt_exp.train.state import BudgetPlan, SnapshotRef


@dataclass(frozen=True)
class RunStart:
    """The run is about to train (also when it resumes): how it runs, and for how many epochs."""

    precision: PrecisionChoice
    total_epochs: int
    budget_minutes: float | None = None  # a budgeted run not yet planned: total_epochs is not known yet
    cycle_epochs: int = 0  # epochs per cosine cycle (a budgeted run not yet planned: set by its plan)


@dataclass(frozen=True)
class EpochEnd:
    epoch: int  # 0-based, over all cycles
    metrics: dict[str, float]
    replayed: bool = False  # re-emitted on resume (trained before, by this or another machine)


@dataclass(frozen=True)
class SnapshotReady:
    """The best epoch of a finished cycle; ``published`` are the earlier cycles' snapshots, in order."""

    snapshot: SnapshotRef
    val_ids: np.ndarray  # (N,) ids of the fold's validation tiles, the order of the stored probabilities
    published: tuple[SnapshotRef, ...]


@dataclass(frozen=True)
class BudgetReport:
    """A time-budgeted run's plan (``final`` False: just planned, or resumed) or, at its end, what it did."""

    plan: BudgetPlan
    done_epochs: int
    done_steps: int
    final: bool = False

    @property
    def planned_steps(self) -> int:
        return self.plan.planned_steps


@dataclass(frozen=True)
class CheckpointSaved:
    """The state after ``epochs_done`` epochs is in the work folder (after the epoch's snapshot was published):
    ``files`` are what another machine needs to continue from it (``salt_exp.train.state.travelling_files``)."""

    epochs_done: int
    files: tuple[Path, ...]


@dataclass(frozen=True)
class Resumed:
    """The run continues after ``epochs_done`` epochs from ``source`` (which machine's checkpoint, local or the
    store's); ``warning``: the checkpoint was written at another commit ("" when not)."""

    epochs_done: int
    source: str
    warning: str = ""


@dataclass(frozen=True)
class RunEnd:
    status: FoldStatus
    reason: str = ""  # why it failed; empty when it finished


class HookBase:
    """Every event is a no-op unless overridden."""

    def on_start(self, event: RunStart) -> None:
        pass

    def on_lr_find(self, result: LRFindResult) -> None:
        pass

    def on_epoch(self, event: EpochEnd) -> None:
        pass

    def on_snapshot(self, event: SnapshotReady) -> None:
        pass

    def on_budget(self, event: BudgetReport) -> None:
        pass

    def on_checkpoint(self, event: CheckpointSaved) -> None:
        pass

    def on_resume(self, event: Resumed) -> None:
        pass

    def on_end(self, event: RunEnd) -> None:
        pass


class Hooks(HookBase):
    """Several hooks called in order, for each event."""

    def __init__(self, hooks: Sequence[HookBase]) -> None:
        self.hooks = list(hooks)

    def on_start(self, event: RunStart) -> None:
        for h in self.hooks:
            h.on_start(event)

    def on_lr_find(self, result: LRFindResult) -> None:
        for h in self.hooks:
            h.on_lr_find(result)

    def on_epoch(self, event: EpochEnd) -> None:
        for h in self.hooks:
            h.on_epoch(event)

    def on_snapshot(self, event: SnapshotReady) -> None:
        for h in self.hooks:
            h.on_snapshot(event)

    def on_budget(self, event: BudgetReport) -> None:
        for h in self.hooks:
            h.on_budget(event)

    def on_checkpoint(self, event: CheckpointSaved) -> None:
        for h in self.hooks:
            h.on_checkpoint(event)

    def on_resume(self, event: Resumed) -> None:
        for h in self.hooks:
            h.on_resume(event)

    def on_end(self, event: RunEnd) -> None:
        for h in self.hooks:
            h.on_end(event)


class EpochLog(HookBase):
    """One line per epoch on stdout (flushed, so it shows in any log, not only on a terminal): epoch and
    cycle, the losses, val_map, throughput, the time spent, an ETA for the run and how it runs."""

    def __init__(self, label: str, print_fn: Callable[[str], None] | None = None) -> None:
        self.label, self.print = label, print_fn or (lambda s: print(s, flush=True))
        self.total, self.cycle_epochs, self.how, self.seconds = 0, 0, "", []

    def on_start(self, event: RunStart) -> None:
        self.total, self.how, self.cycle_epochs = event.total_epochs, event.precision.log_line(), event.cycle_epochs
        epochs = (f"{self.total} epochs" if event.budget_minutes is None else
                  f"budget {event.budget_minutes:g} min (epochs planned once the first batches are timed)")
        self.print(f"[{self.label}] {epochs}; {self.how}; {event.precision.reason}")

    def on_epoch(self, event: EpochEnd) -> None:
        if event.replayed:  # the resume line said where it continues; these epochs were trained (and shown) before
            return
        m = event.metrics
        self.seconds.append(float(m.get("epoch_seconds", 0.0)))
        left = self.total - event.epoch - 1
        eta = left * sum(self.seconds[-3:]) / len(self.seconds[-3:])
        cycle = ""
        if self.cycle_epochs:
            cycles = max(1, -(-self.total // self.cycle_epochs))
            cycle = f" (cycle {event.epoch // self.cycle_epochs + 1}/{cycles})"
        val = f"val_loss {m['val_loss']:.4f} val_map {m['val_map']:.4f} " if "val_map" in m else "(no validation) "
        self.print(f"[{self.label}] epoch {event.epoch + 1}/{self.total}{cycle} train_loss {m['train_loss']:.4f} "
                   f"{val}{m['train_images_per_s']:.1f} img/s {m['epoch_seconds']:.0f}s, "
                   f"elapsed {sum(self.seconds) / 60:.1f} min, ETA {eta / 60:.1f} min [{self.how}]")

    def on_resume(self, event: Resumed) -> None:
        self.print(f"[{self.label}] resumed after epoch {event.epochs_done} from {event.source}"
                   + (f"; warning: {event.warning}" if event.warning else ""))

    def on_budget(self, event: BudgetReport) -> None:
        p = event.plan
        if not event.final:
            self.total, self.cycle_epochs = p.epochs, p.cycle_epochs
            self.print(f"[{self.label}] budget {p.budget_minutes:g} min: {p.cycles} cycle(s) x {p.cycle_epochs} epoch(s) "
                       f"= {p.epochs} epochs of {p.batches}/{p.steps_per_epoch} batches ({event.planned_steps} steps; ~{p.step_s:.3f}s/step, ~{p.val_s:.1f}s "
                       f"validation){'; ' + p.note if p.note else ''}")
            return
        why = "stopped: the next epoch would overrun the budget" if p.stopped else "plan done"
        self.print(f"[{self.label}] budget: {event.done_epochs}/{p.epochs} epochs, {event.done_steps}/"
                   f"{event.planned_steps} steps in {p.used_s:.0f}s of {p.budget_s:.0f}s ({why})")
