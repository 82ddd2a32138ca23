"""Hooks: what a fold run tells the outside world, as typed events; tracking and pruning are hooks.

A hook overrides the events it cares about; :class:`HookBase` gives every other event a no-op.
Events are replayed when a run resumes, so hooks must be idempotent (the MLflow hook skips what
the store already holds).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from salt_exp.contract import FoldStatus
from salt_exp.train.lr_find import LRFindResult
from salt_exp.train.state import SnapshotRef


@dataclass(frozen=True)
class EpochEnd:
    epoch: int  # 0-based, over all cycles
    metrics: dict[str, float]


@dataclass(frozen=True)
class SnapshotReady:
    """The best epoch of a finished cycle; ``published`` are the earlier cycles' snapshots, in order."""

    snapshot: SnapshotRef
    val_ids: np.ndarray  # (N,) ids of the fold's validation tiles, the order of the stored probabilities
    published: tuple[SnapshotRef, ...]


@dataclass(frozen=True)
class RunEnd:
    status: FoldStatus
    reason: str = ""  # why it failed; empty when it finished


class HookBase:
    """Every event is a no-op unless overridden."""

    def on_lr_find(self, result: LRFindResult) -> None:
        pass

    def on_epoch(self, event: EpochEnd) -> None:
        pass

    def on_snapshot(self, event: SnapshotReady) -> None:
        pass

    def on_end(self, event: RunEnd) -> None:
        pass


class Hooks(HookBase):
    """Several hooks called in order, for each event."""

    def __init__(self, hooks: Sequence[HookBase]) -> None:
        self.hooks = list(hooks)

    def on_lr_find(self, result: LRFindResult) -> None:
        for h in self.hooks:
            h.on_lr_find(result)

    def on_epoch(self, event: EpochEnd) -> None:
        for h in self.hooks:
            h.on_epoch(event)

    def on_snapshot(self, event: SnapshotReady) -> None:
        for h in self.hooks:
            h.on_snapshot(event)

    def on_end(self, event: RunEnd) -> None:
        for h in self.hooks:
            h.on_end(event)
