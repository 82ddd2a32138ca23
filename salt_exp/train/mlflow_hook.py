"""The fold-run hook that writes the MLflow contract (names and paths from ``salt_exp.contract``).

Idempotent: metric steps already in the run are skipped, artifacts already logged are not
uploaded again, tables are replaced whole, a cycle's logged model is found again by its key and its
registry version is created once, so a resumed run that replays its events leaves exactly one copy
of everything.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from salt_exp import contract as C
from salt_exp.contract import SnapshotVersion, Tag
from salt_exp.faults import fault_point
from salt_exp.plots import coverage_bins_figure
from salt_exp.tracking import RunTracker, temp_dir
from salt_exp.train.hooks import BudgetReport, EpochEnd, HookBase, Resumed, RunEnd, RunStart, SnapshotReady
from salt_exp.train.lr_find import LRFindResult, plot_lr_find
from salt_exp.train.state import SnapshotRef


class MLflowHook(HookBase):
    """``template`` holds the version tags every snapshot of this run shares (study, trial, fold, ...)."""

    def __init__(self, tracker: RunTracker, template: SnapshotVersion, dataset: tuple[str, str] | None = None) -> None:
        self.tracker, self.template = tracker, template
        self.dataset = dataset  # (name, digest) of the validation tiles: what snapshot metrics were measured on
        self._logged: dict[str, set[int]] = {}
        self.versions: dict[int, str] = {}

    def _log_new(self, metrics: dict[str, float], step: int, *, model_id: str | None = None,
                 dataset: tuple[str, str] | None = None) -> None:
        """Log the metrics not yet at ``step`` (a resumed run replays steps it may have logged); with ``model_id``
        they also belong to that logged model (measured on ``dataset`` (name, digest) when given)."""
        fresh = {}
        for key, value in metrics.items():
            if key not in self._logged:
                self._logged[key] = set(self.tracker.metric_steps(key))
            if step not in self._logged[key]:
                fresh[key] = value
                self._logged[key].add(step)
        if fresh and model_id:
            from salt_exp.tracking.models import log_model_metrics

            log_model_metrics(self.tracker.run_id, model_id, fresh, step, dataset)
        elif fresh:
            self.tracker.log_metrics(fresh, step)

    def on_start(self, event: RunStart) -> None:
        """How the run computes (precision, channels_last, threads), chosen or measured: params + tags."""
        self.tracker.log_params(event.precision.to_params())
        self.tracker.set_tags(event.precision.to_tags())

    def on_resume(self, event: Resumed) -> None:
        """Where the latest resume came from, and the warning when another commit wrote its checkpoint."""
        tags = {Tag.RESUMED_FROM: f"after epoch {event.epochs_done} from {event.source}"}
        if event.warning:
            tags[Tag.RESUME_WARNING] = event.warning
        self.tracker.set_tags(tags)

    def on_lr_find(self, result: LRFindResult) -> None:
        for i, (lr, loss) in enumerate(zip(result.lrs, result.losses, strict=True)):
            self._log_new({"lr_find_loss": loss, "lr_find_lr": lr}, i)
        self._log_new({"lr_find_suggestion": result.suggestion}, 0)
        self.tracker.set_tags({Tag.LR_FIND_REASON: result.reason})
        if not self.tracker.artifact_exists(C.LR_FIND_PNG):
            with temp_dir() as tmp:
                self.tracker.log_artifact(plot_lr_find(result, Path(tmp) / C.LR_FIND_PNG))

    def on_epoch(self, event: EpochEnd) -> None:
        self._log_new(event.metrics, event.epoch)
        fault_point("fold.after_epoch_metrics")

    def on_snapshot(self, event: SnapshotReady) -> None:
        """Log and register the best snapshot of a cycle (a full-data fit's: its latest, with no OOF): its OOF and
        coverage-bin table into the run's ``snapshots/cycle_<c>/``, its weights as a logged pyfunc model (with the
        cycle's metrics linked to it), then the registry version created from that model."""
        snap, c = event.snapshot, event.snapshot.cycle
        scored = bool(snap.oof)
        bins = {f"val_map_bin_{b['bin']}": b["mean_score"] for b in snap.bins if b["count"]}
        bins.update({f"val_err_share_{b['bin']}": b["err_share"] for b in snap.bins})
        scores = {C.Metric.SNAPSHOT_VAL_MAP: snap.val_map} if scored else {}
        folder = C.snapshot_dir(c)
        if scored and not self.tracker.artifact_exists(C.snapshot_oof(c)):
            self.tracker.log_table({k: [b[k] for b in snap.bins] for k in snap.bins[0]}, f"{folder}/{C.COVERAGE_TABLE}")
            fault_point("snapshot.after_bins_table")
            self._log_bins_png(snap, folder)
            with temp_dir() as tmp:
                oof = C.write_snapshot_oof(Path(tmp) / C.SNAPSHOT_OOF_FILE, event.val_ids, np.load(snap.oof))
                self.tracker.log_artifact(oof, folder)  # last: its presence marks the folder complete
        thr = snap.val_best_thr if scored else self.template.val_best_thr  # a full fit: its cv runs' threshold
        model_id = self._log_model(snap, thr)
        self._log_new({**bins, **scores, C.Metric.SNAPSHOT_EPOCH: snap.epoch}, c, model_id=model_id,
                      dataset=self.dataset if scored else None)
        version = replace(self.template, cycle=c, epoch=snap.epoch, val_map=snap.val_map, val_best_thr=thr,
                          weights=C.model_weights_path(snap.weights), oof=C.snapshot_oof(c) if scored else "",
                          model_id=model_id)
        self.versions[c] = self.tracker.register_version(version.model, folder, version.to_tags(), key_tag="cycle",
                                                         model_id=model_id)
        if scored:
            self._log_run_table([*event.published, snap])

    def _log_model(self, snap: SnapshotRef, threshold: float) -> str:
        """The snapshot as a pyfunc logged model of this run (step: its cycle), logged once per cycle."""
        from salt_exp.tracking.models import log_snapshot_model

        t, c = self.template, snap.cycle
        return log_snapshot_model(self.tracker.run_id, t, cycle=c, epoch=snap.epoch, threshold=threshold,
                                  weights=snap.weights, step=c,
                                  label=f"{t.model} fold {C.fold_label(t.fold)} cycle {c} (run {self.tracker.run_id})")

    def _log_run_table(self, snaps: list[SnapshotRef]) -> None:
        """Root ``coverage_bins.json`` (every cycle so far, rewritten whole) and the latest ``coverage_bins.png``."""
        keys = list(snaps[0].bins[0])
        rows = [(s.cycle, s.epoch, b) for s in snaps for b in s.bins]
        table = {"cycle": [r[0] for r in rows], "epoch": [r[1] for r in rows], **{k: [r[2][k] for r in rows] for k in keys}}
        self.tracker.log_table(table, C.COVERAGE_TABLE)
        self._log_bins_png(snaps[-1], None)

    def _log_bins_png(self, snap: SnapshotRef, folder: str | None) -> None:
        """``coverage_bins.png`` of one snapshot into ``folder`` (None: the run root)."""
        title = f"fold {C.fold_label(self.template.fold)} cycle {snap.cycle} (epoch {snap.epoch})"
        with temp_dir() as tmp:
            coverage_bins_figure(snap.bins, title).savefig(Path(tmp) / C.COVERAGE_PNG, dpi=100)
            self.tracker.log_artifact(Path(tmp) / C.COVERAGE_PNG, folder)

    def on_budget(self, event: BudgetReport) -> None:
        """A budgeted run's plan (params, and the note as a tag) and, at its end, planned vs done (metrics)."""
        p, M = event.plan, C.Metric
        self.tracker.log_params({M.BUDGET_MINUTES: p.budget_minutes, M.PLANNED_CYCLES: p.cycles,
                                 M.PLANNED_CYCLE_EPOCHS: p.cycle_epochs, M.PLANNED_EPOCHS: p.epochs,
                                 M.PLANNED_EPOCH_BATCHES: p.batches, M.PLANNED_STEPS: event.planned_steps})
        if p.note:
            self.tracker.set_tags({Tag.BUDGET_NOTE: p.note})
        if event.final:
            self._log_new({M.BUDGET_MINUTES: p.budget_minutes, M.PLANNED_EPOCHS: p.epochs,
                           M.PLANNED_STEPS: event.planned_steps, M.DONE_EPOCHS: event.done_epochs,
                           M.DONE_STEPS: event.done_steps, M.BUDGET_USED_S: p.used_s}, 0)

    def on_end(self, event: RunEnd) -> None:
        self.tracker.set_tags({Tag.STATUS: event.status.value, **({Tag.FAILURE: event.reason} if event.reason else {})})
