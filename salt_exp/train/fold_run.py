"""One fold of one configuration: LR range test, cosine cycles, per-cycle best snapshots.

The loop emits typed events to hooks (``salt_exp.train.hooks``); tracking, pruning and progress
reporting are hooks, not part of the loop. The training state is saved after every epoch so a
killed run resumes from its last completed epoch; events are replayed on resume and hooks must be
idempotent (the MLflow hook skips what it already logged).
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from salt_exp import contract as C
from salt_exp.config import ExperimentConfig, to_dict
from salt_exp.contract import FoldStatus
from salt_exp.io import write_json
from salt_exp.metrics import THRESHOLD_GRID, bin_breakdown, coverage_bins, image_scores, threshold_search
from salt_exp.train.budget import plan_cycles, probe_seconds, replan, should_stop
from salt_exp.train.engine import NonFiniteLoss, Runtime, choose_runtime, forward_cropped, predict, train_epoch
from salt_exp.train.hooks import (
                                  BudgetReport,
                                  CheckpointSaved,
                                  EpochEnd,
                                  HookBase,
                                  Hooks,
                                  Resumed,
                                  RunEnd,
                                  RunStart,
                                  SnapshotReady,
)
from salt_exp.train.lr_find import LRFindResult, lr_range_test
from salt_exp.train.precision import PrecisionChoice, resolve_device
from salt_exp.train.schedule import CosineCycles, cosine_cycles
from salt_exp.train.setup import FoldData, build_loss, build_optimizer, build_parts, train_loader, val_loader
from salt_exp.train.state import (
                                  BudgetPlan,
                                  CheckpointIdentity,
                                  RunState,
                                  SnapshotRef,
                                  drop_files,
                                  load_state,
                                  save_snapshot,
                                  save_state,
                                  travelling_files,
)


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


PRECISION_FILE = "precision.json"  # in the work folder: the run's precision choice, reused on resume


class FoldTrainer:
    def __init__(self, cfg: ExperimentConfig, fd: FoldData, fold: int, *, workdir: Path, hooks: list[HookBase],
                 identity: CheckpointIdentity | None = None, restored_from: str = "",
                 init: dict | None = None) -> None:
        """``identity``: written into ``last.pt`` and checked against the one a resumed checkpoint holds;
        ``restored_from``: where the work folder's checkpoint came from when it was just downloaded from the store;
        ``init``: the state_dict the model starts from instead of its initial weights (a resume replaces it); the
        caller has checked that it fits this config's model (``run.warm_start``, before the run started)."""
        self.cfg, self.fd, self.fold, self.workdir, self.hooks = cfg, fd, fold, workdir, Hooks(hooks)
        self.identity, self.restored_from = identity, restored_from
        self.model, self.adapter, self.loss_fn = build_parts(cfg)
        if init is not None:
            self.model.load_state_dict(init)
        self.late_loss_fn = build_loss(cfg, late=True) if cfg.loss.late_terms else self.loss_fn
        self.model.to(resolve_device(cfg.train.device))  # params on the device before the optimizer is built
        lr0 = cfg.optim.lr if cfg.optim.lr != "auto" else cfg.lr_find.start_lr
        self.optimizer = build_optimizer(cfg, self.model, lr0)
        self.rt, self.precision = self._choose_runtime()
        self.scaler = self.rt.grad_scaler()
        self.state = RunState()
        self.steps_per_epoch = len(train_loader(cfg, fd, 0))
        self._clock, self._epoch_mark = time.perf_counter(), None  # budgeted runs: time not yet charged
        self._lr_find_step_s = 0.0  # wall seconds per LR-finder step (real loader batches) when it ran now
        self._last_batches = 0  # training batches of the last epoch this process ran

    @property
    def cycle_epochs(self) -> int:
        """Epochs per cycle: the config's, or a budgeted run's plan."""
        plan = self.state.budget
        return plan.cycle_epochs if plan is not None else self.cfg.schedule.cycle_epochs

    @property
    def total_epochs(self) -> int:
        plan = self.state.budget
        return plan.epochs if plan is not None else self.cfg.schedule.cycles * self.cfg.schedule.cycle_epochs

    @cached_property
    def _first_batch(self) -> dict:
        """Epoch 0's first batch, for timing (precision, budget): its loader has its own seeded generator, so
        drawing it changes no random state of the run; drawn once however many timings use it."""
        return next(iter(train_loader(self.cfg, self.fd, 0)))

    @property
    def last_path(self) -> Path:
        return self.workdir / "last.pt"

    def _choose_runtime(self) -> tuple[Runtime, PrecisionChoice]:
        """Precision, memory format and threads of this run: what its work folder recorded (a resumed run
        keeps its choice and times nothing), else chosen now (timed on one training batch where asked)."""
        t, saved = self.cfg.train, self.workdir / PRECISION_FILE
        if saved.exists():
            choice = PrecisionChoice.from_dict(json.loads(saved.read_text(encoding="utf-8")))
            torch.set_num_threads(choice.threads)
            rt = Runtime.for_choice(t.device, choice)
            rt.prepare_model(self.model)
            return rt, choice
        timed = "auto" in (t.precision, t.channels_last, t.threads)
        batch = self._first_batch if timed else None
        rt, choice = choose_runtime(self.model, self.adapter, device=t.device, precision=t.precision,
                                    channels_last=t.channels_last, amp=t.amp, batch=batch, loss_fn=self.loss_fn,
                                    optimizer=self.optimizer, grad_clip=self.cfg.optim.grad_clip,
                                    requested_threads=t.threads)
        write_json(saved, choice.to_dict())
        return rt, choice

    def _save(self) -> None:
        save_state(self.last_path, self.state, model=self.model, optimizer=self.optimizer, scaler=self.scaler,
                   identity=self.identity)

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
        t0 = time.perf_counter()
        result = lr_range_test(self.model, self._loss_step, train_loader(self.cfg, self.fd, -1), self.optimizer,
                               start_lr=lf.start_lr, end_lr=lf.end_lr, steps=lf.steps, smooth=lf.smooth,
                               diverge=lf.diverge, scaler=self.scaler)
        self._lr_find_step_s = (time.perf_counter() - t0) / max(len(result.lrs), 1)
        self.state.lr_find = asdict(result)
        self.state.max_lr = result.suggestion if self.cfg.optim.lr == "auto" else float(self.cfg.optim.lr)
        self._save()

    def _replay(self) -> None:
        """Re-emit what a killed run may not have delivered; hooks drop what they already have."""
        if self.state.lr_find:
            self.hooks.on_lr_find(LRFindResult(**self.state.lr_find))
        for epoch, metrics in enumerate(self.state.history):
            self.hooks.on_epoch(EpochEnd(epoch, metrics, replayed=True))
        self._publish_finished_cycles()

    def _publish_finished_cycles(self, partial: bool = False) -> None:
        """Publish each finished cycle's snapshot once; ``partial`` also the current cycle's (a budget stop)."""
        done_cycles = (self.state.epochs_done + (self.cycle_epochs - 1 if partial else 0)) // self.cycle_epochs
        for cycle in range(done_cycles):
            if cycle not in self.state.published and cycle in self.state.best:
                earlier = tuple(self.state.best[c] for c in sorted(self.state.published))
                self.hooks.on_snapshot(SnapshotReady(self.state.best[cycle], self.fd.val_ids, earlier))
                self.state.published.append(cycle)
                self._save()

    @property
    def validated(self) -> bool:
        """False for a full-data fit: no tile is held out, so each cycle keeps its latest epoch."""
        return len(self.fd.val_idx) > 0

    def _keep_if_best(self, epoch: int, metrics: dict[str, float], probs: np.ndarray | None, bins: list[dict]) -> None:
        cycle = epoch // self.cycle_epochs
        old = self.state.best.get(cycle)
        if old is not None and self.validated and metrics["val_map"] <= old.val_map:  # ties keep the earlier epoch
            return
        meta = {"config": to_dict(self.cfg), "fold": self.fold, "cycle": cycle, "epoch": epoch, **metrics}
        weights, oof = save_snapshot(self.workdir, cycle=cycle, epoch=epoch, model=self.model, meta=meta, oof=probs)
        nan = float("nan")
        self.state.best[cycle] = SnapshotRef(cycle=cycle, epoch=epoch, val_map=metrics.get("val_map", nan),
                                             val_best_thr=metrics.get("val_best_thr", nan),
                                             val_map_best_thr=metrics.get("val_map_best_thr", nan), weights=weights,
                                             oof=oof, bins=bins)
        if old is not None:
            drop_files(old.weights, old.oof)

    def loss_at(self, epoch: int):
        """The loss of ``epoch``: ``loss.late_terms`` from cycle ``loss.late_from_cycle`` on, else the first."""
        return self.late_loss_fn if epoch // self.cycle_epochs >= self.cfg.loss.late_from_cycle else self.loss_fn

    def pseudo_at(self, epoch: int) -> bool:
        """Whether ``epoch`` draws pseudo-labelled tiles: in the first ``pseudo.cycles`` cycles (None: every one)."""
        limit = self.cfg.pseudo.cycles
        return limit is None or epoch // self.cycle_epochs < limit

    def _epoch(self, epoch: int) -> None:
        plan, loss_fn, schedule = self.state.budget, self.loss_at(epoch), self._schedule()
        loader = train_loader(self.cfg, self.fd, epoch, batches=plan.batches if plan is not None else None,
                              pseudo=self.pseudo_at(epoch))
        # a budgeted run's epochs differ in length (re-planned): the LR follows the epoch's share of its cycle
        start = epoch * plan.batches if plan is not None else self.state.step
        stats = train_epoch(self.model, self.adapter, loss_fn, loader,
                            optimizer=self.optimizer, schedule=schedule, step=start, rt=self.rt,
                            scaler=self.scaler, grad_clip=self.cfg.optim.grad_clip,
                            desc=f"fold {C.fold_label(self.fold)} epoch {epoch + 1}/{self.total_epochs}")
        t0 = time.perf_counter()
        probs, metrics, bins = None, {}, []
        if self.validated:
            probs, val_loss = predict(self.model, self.adapter, val_loader(self.cfg, self.fd), self.rt, loss_fn=loss_fn)
            metrics, bins = evaluate(probs, self.fd.val_masks)
            metrics["val_loss"] = val_loss
        metrics.update(train_loss=stats.loss, lr=schedule.lr_at(max(stats.next_step - 1, 0)),
                       epoch_seconds=stats.seconds + time.perf_counter() - t0,
                       train_images_per_s=stats.images / max(stats.seconds, 1e-9))
        self._last_batches = stats.next_step - start
        self.state.step += self._last_batches
        self._keep_if_best(epoch, metrics, probs, bins)
        self.state.history.append(metrics)
        self.state.epochs_done = epoch + 1
        self._charge()  # a budgeted run's spent time is saved with the epoch
        if plan is not None:
            metrics[C.Metric.BUDGET_SHARE] = plan.used_s / plan.budget_s
        self._save()
        self.hooks.on_epoch(EpochEnd(epoch, metrics))
        if (epoch + 1) % self.cycle_epochs == 0:
            self._publish_finished_cycles()
        self.hooks.on_checkpoint(CheckpointSaved(self.state.epochs_done,
                                                 tuple(travelling_files(self.workdir, self.state))))

    def run(self, resume: bool) -> FoldResult:
        resumed = resume and self.last_path.exists()
        warning = ""
        if resumed:  # before RunStart, so that a budgeted run announces its planned epochs
            self.state, warning = load_state(self.last_path, self.model, self.optimizer, self.scaler,
                                             identity=self.identity)
        unplanned = self.cfg.schedule.budget_minutes if self.state.budget is None else None
        self.hooks.on_start(RunStart(self.precision, self.total_epochs, budget_minutes=unplanned,
                                     cycle_epochs=self.cycle_epochs))
        if resumed:
            source = self.restored_from or f"{socket.gethostname()}'s work folder"
            self.hooks.on_resume(Resumed(self.state.epochs_done, source, warning))
            self._replay()
        self._clock = time.perf_counter()  # a budget charges the time from here (the replay is not training)
        try:
            if self.state.max_lr is None:
                self._find_lr()
                if self.state.lr_find:
                    self.hooks.on_lr_find(LRFindResult(**self.state.lr_find))
            self._plan_budget()
            epoch = self.state.epochs_done
            while epoch < self.total_epochs:  # re-read: a budgeted run's replan may add cycles
                if self._out_of_budget(epoch):
                    break
                self._epoch(epoch)
                epoch += 1
        except NonFiniteLoss as exc:
            self._report_budget(final=True)
            self.hooks.on_end(RunEnd(FoldStatus.FAILED, str(exc)))
            return FoldResult(FoldStatus.FAILED, str(exc), self.best_val_map(), list(self.state.best.values()))
        self._report_budget(final=True)
        self.hooks.on_end(RunEnd(FoldStatus.FINISHED))
        snapshots = [self.state.best[c] for c in sorted(self.state.best)]
        return FoldResult(FoldStatus.FINISHED, "", self.best_val_map(), snapshots)

    def _schedule(self) -> CosineCycles:
        """The config's cosine cycles, or a budgeted run's: its planned cycles and cycle length."""
        sc, plan, steps = self.cfg.schedule, self.state.budget, self.steps_per_epoch
        if plan is not None:
            sc = replace(sc, cycles=plan.cycles, cycle_epochs=plan.cycle_epochs,
                         warmup_epochs=min(sc.warmup_epochs, plan.cycle_epochs - 1))
            steps = plan.batches
        return cosine_cycles(sc, self.state.max_lr, steps)

    def _charge(self) -> None:
        """Add the wall time since the last charge to a budgeted run's spent time."""
        now = time.perf_counter()
        if self.state.budget is not None:
            self.state.budget.used_s += now - self._clock
        self._clock = now

    def _plan_budget(self) -> None:
        """With ``schedule.budget_minutes``: time the first batches (after the LR finder) and fit the cycles to
        what is left of the budget. Once per run: a resumed run keeps its plan (and announces it again)."""
        minutes = self.cfg.schedule.budget_minutes
        if minutes is None or self.state.budget is not None:
            self._report_budget(final=False)
            return
        # timed on real loader batches, with the late loss where there is one (Lovasz, a sort per tile, costs
        # more than BCE); an LR finder that just ran is a longer real-loader timing of the same step
        step_s, image_s = probe_seconds(self.model, self.adapter, self.late_loss_fn, self.optimizer,
                                        batches=train_loader(self.cfg, self.fd, 0), rt=self.rt, scaler=self.scaler,
                                        grad_clip=self.cfg.optim.grad_clip)
        step_s = max(step_s, self._lr_find_step_s)
        used, val_s = time.perf_counter() - self._clock, image_s * len(self.fd.val_idx)
        fit = plan_cycles(budget_s=60.0 * minutes, used_s=used, step_s=step_s, steps_per_epoch=self.steps_per_epoch,
                          val_s=val_s, cycles=self.cfg.schedule.cycles)
        self.state.budget = BudgetPlan(budget_minutes=minutes, cycles=fit.cycles, cycle_epochs=fit.cycle_epochs,
                                       epoch_steps=fit.epoch_steps, steps_per_epoch=self.steps_per_epoch,
                                       step_s=step_s, val_s=val_s, used_s=used, note=fit.note)
        self._clock = time.perf_counter()
        self._save()
        self._report_budget(final=False)

    def _out_of_budget(self, epoch: int) -> bool:
        """Before ``epoch`` of a budgeted run: charge the time, measure the last epoch, and stop (publishing the
        current cycle's best epoch, saving the state) when the next epoch would overrun the budget."""
        plan = self.state.budget
        if plan is None:
            return False
        self._charge()
        if self._epoch_mark is not None:  # None at this process's first check: no epoch ran since
            plan.epoch_wall_s.append(plan.used_s - self._epoch_mark)
            plan.epoch_batches.append(self._last_batches)
            cycles = plan.cycles
            replan(plan, epoch)
            if plan.cycles != cycles:
                self._report_budget(final=False)  # the longer plan, printed and its note tagged
        self._epoch_mark = plan.used_s
        if not should_stop(plan, epoch):
            return False
        plan.stopped = True
        self._publish_finished_cycles(partial=True)
        self._save()
        return True

    def _report_budget(self, final: bool) -> None:
        plan = self.state.budget
        if plan is None:
            return
        if final:
            self._charge()  # not saved: the state on disk stays the last epoch's (or the stop's)
        self.hooks.on_budget(BudgetReport(plan, done_epochs=self.state.epochs_done, done_steps=self.state.step,
                                          final=final))

    def best_val_map(self) -> float:
        """The best cycle's val_map; NaN when nothing was validated (a full-data fit)."""
        return max((s.val_map for s in self.state.best.values() if s.val_map == s.val_map), default=float("nan"))

