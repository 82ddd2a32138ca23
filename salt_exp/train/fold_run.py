"""One fold of one configuration: LR range test, cosine cycles, per-cycle best snapshots.

The loop emits typed events to hooks (``salt_exp.train.hooks``); tracking, pruning and progress
reporting are hooks, not part of the loop. The training state is saved after every epoch so a
killed run resumes from its last completed epoch; events are replayed on resume and hooks must be
idempotent (the MLflow hook skips what it already logged).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from salt_exp.config import ExperimentConfig, to_dict
from salt_exp.contract import FoldStatus
from salt_exp.metrics import THRESHOLD_GRID, bin_breakdown, coverage_bins, image_scores, threshold_search
from salt_exp.train.engine import NonFiniteLoss, Runtime, forward_cropped, predict, train_epoch
from salt_exp.train.hooks import EpochEnd, HookBase, Hooks, RunEnd, SnapshotReady
from salt_exp.train.lr_find import LRFindResult, lr_range_test
from salt_exp.train.schedule import cosine_cycles
from salt_exp.train.setup import FoldData, build_optimizer, build_parts, train_loader, val_loader
from salt_exp.train.state import RunState, SnapshotRef, drop_files, load_state, save_snapshot, save_state


@dataclass(frozen=True)
class FoldResult:
    status: FoldStatus  # FINISHED | FAILED
    reason: str
    best_val_map: float
    snapshots: list[SnapshotRef]


def evaluate(probs: np.ndarray, masks: np.ndarray) -> tuple[dict[str, float], list[dict]]:
    """Validation metrics at 101x101: mAP at 0.5, at the best threshold, and the bins at 0.5."""
    best_thr, best_map, _ = threshold_search(probs, masks, THRESHOLD_GRID)
    scores = image_scores(probs > 0.5, masks)
    metrics = {"val_map": float(scores.mean()), "val_map_best_thr": best_map, "val_best_thr": best_thr}
    return metrics, bin_breakdown(scores, coverage_bins(masks))


class FoldTrainer:
    def __init__(self, cfg: ExperimentConfig, fd: FoldData, fold: int, *, workdir: Path, hooks: list[HookBase]) -> None:
        self.cfg, self.fd, self.fold, self.workdir, self.hooks = cfg, fd, fold, workdir, Hooks(hooks)
        self.rt = Runtime.resolve(cfg.train.device, cfg.train.amp, cfg.train.channels_last)
        model, self.adapter, self.loss_fn = build_parts(cfg)
        self.model = model.to(self.rt.device)
        if self.rt.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        lr0 = cfg.optim.lr if cfg.optim.lr != "auto" else cfg.lr_find.start_lr
        self.optimizer = build_optimizer(cfg, self.model, lr0)
        self.scaler = torch.amp.GradScaler(self.rt.device.type, enabled=self.rt.amp)
        self.state = RunState()
        self.steps_per_epoch = len(train_loader(cfg, fd, 0))
        self.total_epochs = cfg.schedule.cycles * cfg.schedule.cycle_epochs

    @property
    def last_path(self) -> Path:
        return self.workdir / "last.pt"

    def _save(self) -> None:
        save_state(self.last_path, self.state, model=self.model, optimizer=self.optimizer, scaler=self.scaler)

    def _loss_step(self, batch: dict) -> torch.Tensor:
        images, masks = self.rt.to_input(batch["image"]), batch["mask"].to(self.rt.device)
        with self.rt.autocast():
            return self.loss_fn(forward_cropped(self.model, self.adapter, images), masks)[0].float()

    def _find_lr(self) -> None:
        lf = self.cfg.lr_find
        if self.cfg.optim.lr != "auto" and not lf.enabled:
            self.state.max_lr = float(self.cfg.optim.lr)
            return
        torch.manual_seed(self.cfg.seed + 1)
        result = lr_range_test(self.model, self._loss_step, train_loader(self.cfg, self.fd, -1), self.optimizer,
                               start_lr=lf.start_lr, end_lr=lf.end_lr, steps=lf.steps, smooth=lf.smooth,
                               diverge=lf.diverge)
        self.state.lr_find = asdict(result)
        self.state.max_lr = result.suggestion if self.cfg.optim.lr == "auto" else float(self.cfg.optim.lr)
        self._save()

    def _replay(self) -> None:
        """Re-emit what a killed run may not have delivered; hooks drop what they already have."""
        if self.state.lr_find:
            self.hooks.on_lr_find(LRFindResult(**self.state.lr_find))
        for epoch, metrics in enumerate(self.state.history):
            self.hooks.on_epoch(EpochEnd(epoch, metrics))
        self._publish_finished_cycles()

    def _publish_finished_cycles(self) -> None:
        done_cycles = self.state.epochs_done // self.cfg.schedule.cycle_epochs
        for cycle in range(done_cycles):
            if cycle not in self.state.published and cycle in self.state.best:
                earlier = tuple(self.state.best[c] for c in sorted(self.state.published))
                self.hooks.on_snapshot(SnapshotReady(self.state.best[cycle], self.fd.val_ids, earlier))
                self.state.published.append(cycle)
                self._save()

    def _keep_if_best(self, epoch: int, metrics: dict[str, float], probs: np.ndarray, bins: list[dict]) -> None:
        cycle = epoch // self.cfg.schedule.cycle_epochs
        old = self.state.best.get(cycle)
        if old is not None and metrics["val_map"] <= old.val_map:  # ties keep the earlier epoch
            return
        meta = {"config": to_dict(self.cfg), "fold": self.fold, "cycle": cycle, "epoch": epoch, **metrics}
        weights, oof = save_snapshot(self.workdir, cycle=cycle, epoch=epoch, model=self.model, meta=meta, oof=probs)
        self.state.best[cycle] = SnapshotRef(cycle=cycle, epoch=epoch, val_map=metrics["val_map"],
                                             val_best_thr=metrics["val_best_thr"],
                                             val_map_best_thr=metrics["val_map_best_thr"], weights=weights, oof=oof,
                                             bins=bins)
        if old is not None:
            drop_files(old.weights, old.oof)

    def _epoch(self, epoch: int, schedule) -> None:
        stats = train_epoch(self.model, self.adapter, self.loss_fn, train_loader(self.cfg, self.fd, epoch),
                            self.optimizer, schedule, self.state.step, self.rt, self.scaler, self.cfg.optim.grad_clip,
                            desc=f"fold {self.fold} epoch {epoch + 1}/{self.total_epochs}")
        t0 = time.perf_counter()
        probs, val_loss = predict(self.model, self.adapter, val_loader(self.cfg, self.fd), self.rt, self.loss_fn)
        metrics, bins = evaluate(probs, self.fd.val_masks)
        metrics.update(train_loss=stats.loss, val_loss=val_loss, lr=schedule.lr_at(max(stats.next_step - 1, 0)),
                       epoch_seconds=stats.seconds + time.perf_counter() - t0,
                       train_images_per_s=stats.images / max(stats.seconds, 1e-9))
        self.state.step = stats.next_step
        self._keep_if_best(epoch, metrics, probs, bins)
        self.state.history.append(metrics)
        self.state.epochs_done = epoch + 1
        self._save()
        self.hooks.on_epoch(EpochEnd(epoch, metrics))
        if (epoch + 1) % self.cfg.schedule.cycle_epochs == 0:
            self._publish_finished_cycles()

    def run(self, resume: bool) -> FoldResult:
        if resume and self.last_path.exists():
            self.state = load_state(self.last_path, self.model, self.optimizer, self.scaler)
            self._replay()
        try:
            if self.state.max_lr is None:
                self._find_lr()
                if self.state.lr_find:
                    self.hooks.on_lr_find(LRFindResult(**self.state.lr_find))
            schedule = cosine_cycles(self.cfg.schedule, self.state.max_lr, self.steps_per_epoch)
            for epoch in range(self.state.epochs_done, self.total_epochs):
                self._epoch(epoch, schedule)
        except NonFiniteLoss as exc:
            self.hooks.on_end(RunEnd(FoldStatus.FAILED, str(exc)))
            return FoldResult(FoldStatus.FAILED, str(exc), self.best_val_map(), list(self.state.best.values()))
        self.hooks.on_end(RunEnd(FoldStatus.FINISHED))
        snapshots = [self.state.best[c] for c in sorted(self.state.best)]
        return FoldResult(FoldStatus.FINISHED, "", self.best_val_map(), snapshots)

    def best_val_map(self) -> float:
        return max((s.val_map for s in self.state.best.values()), default=float("nan"))

