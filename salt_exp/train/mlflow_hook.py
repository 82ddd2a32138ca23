"""The fold-run hook that writes the MLflow contract (see README, "MLflow contract").

Idempotent: metric steps already in the run are skipped, artifacts already logged are not
uploaded again and a cycle's registry version is created once, so a resumed run that
replays its events leaves exactly one copy of everything.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from salt_exp.tracking import RunTracker
from salt_exp.train.lr_find import LRFindResult, plot_lr_find
from salt_exp.train.plots import coverage_bins_figure
from salt_exp.train.setup import FoldData
from salt_exp.train.state import SnapshotRef


class MLflowHook:
    def __init__(self, tracker: RunTracker, model_name: str, version_tags: dict[str, str]) -> None:
        self.tracker, self.model_name, self.version_tags = tracker, model_name, version_tags
        self._logged: dict[str, set[int]] = {}
        self.versions: dict[int, str] = {}

    def _log_new(self, metrics: dict[str, float], step: int) -> None:
        """Log the metrics not yet at ``step`` (a resumed run replays steps it may have logged)."""
        fresh = {}
        for key, value in metrics.items():
            if key not in self._logged:
                self._logged[key] = set(self.tracker.metric_steps(key))
            if step not in self._logged[key]:
                fresh[key] = value
                self._logged[key].add(step)
        if fresh:
            self.tracker.log_metrics(fresh, step)

    def on_lr_find(self, result: LRFindResult) -> None:
        for i, (lr, loss) in enumerate(zip(result.lrs, result.losses, strict=True)):
            self._log_new({"lr_find_loss": loss, "lr_find_lr": lr}, i)
        self._log_new({"lr_find_suggestion": result.suggestion}, 0)
        self.tracker.set_tags({"salt.lr_find_reason": result.reason})
        if not self.tracker.artifact_exists("lr_find.png"):
            with _tmpdir() as tmp:
                self.tracker.log_artifact(plot_lr_find(result, Path(tmp) / "lr_find.png"))

    def on_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        self._log_new(metrics, epoch)

    def on_snapshot(self, snap: SnapshotRef, fd: FoldData, published: list[SnapshotRef]) -> None:
        """Log and register the best snapshot of a cycle; ``published`` are the cycles before it."""
        c = snap.cycle
        bins = {f"val_map_bin_{b['bin']}": b["mean_score"] for b in snap.bins if b["count"]}
        bins.update({f"val_err_share_{b['bin']}": b["err_share"] for b in snap.bins})
        self._log_new({**bins, "snapshot_val_map": snap.val_map, "snapshot_epoch": snap.epoch}, c)
        folder = f"snapshots/cycle_{c}"
        if not self.tracker.artifact_exists(f"{folder}/oof.npz"):
            self.tracker.log_table({k: [b[k] for b in snap.bins] for k in snap.bins[0]}, f"{folder}/coverage_bins.json")
            self._log_bins_png(snap, folder)
            with _tmpdir() as tmp:
                self.tracker.log_artifact(snap.weights, folder)
                oof = Path(tmp) / "oof.npz"
                np.savez_compressed(oof, ids=fd.val_ids, probs=np.load(snap.oof))
                self.tracker.log_artifact(oof, folder)  # last: its presence marks the folder complete
        tags = {**self.version_tags, "cycle": c, "epoch": snap.epoch, "val_map": f"{snap.val_map:.6f}",
                "val_best_thr": snap.val_best_thr, "weights": f"{folder}/{Path(snap.weights).name}",
                "oof": f"{folder}/oof.npz"}
        self.versions[c] = self.tracker.register_version(self.model_name, folder, tags, key_tag="cycle")
        self._log_run_table(published + [snap])

    def _log_run_table(self, snaps: list[SnapshotRef]) -> None:
        """Root ``coverage_bins.json`` (every cycle so far, rewritten whole) and the latest ``coverage_bins.png``."""
        columns = ["cycle", "epoch", *snaps[0].bins[0].keys()]
        rows = [[s.cycle, s.epoch, *b.values()] for s in snaps for b in s.bins]
        self.tracker.log_json({"columns": columns, "data": rows}, "coverage_bins.json")
        self._log_bins_png(snaps[-1], None)

    def _log_bins_png(self, snap: SnapshotRef, folder: str | None) -> None:
        """``coverage_bins.png`` of one snapshot into ``folder`` (None: the run root)."""
        title = f"fold {self.version_tags.get('fold')} cycle {snap.cycle} (epoch {snap.epoch})"
        with _tmpdir() as tmp:
            coverage_bins_figure(snap.bins, title).savefig(Path(tmp) / "coverage_bins.png", dpi=100)
            self.tracker.log_artifact(Path(tmp) / "coverage_bins.png", folder)

    def on_end(self, status: str, reason: str) -> None:
        self.tracker.set_tags({"salt.status": status, **({"salt.failure": reason} if reason else {})})


def _tmpdir():
    import tempfile

    return tempfile.TemporaryDirectory(prefix="salt-exp-")

