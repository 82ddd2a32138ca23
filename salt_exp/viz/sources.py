"""Where the predictions a figure shows come from: a fold run, an ensemble run or a submission file.

Everything is read from what the runs stored (MLflow artifacts); nothing is predicted again.

- fold run: the out-of-fold probabilities of one snapshot (default: the best cycle by val_map),
  thresholded at 0.5 like the logged ``val_map``;
- ensemble run: ``ensemble/oof.npz`` (mean probabilities, per-fold thresholds, post-processed masks)
  and the test masks of its ``ensemble/*.csv`` submission;
- a submission CSV: test masks only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from salt_exp import contract as C
from salt_exp.contract import Role, RunSummary, SnapshotVersion, Tag
from salt_exp.errors import SaltError
from salt_exp.scoring import read_masks
from salt_exp.tracking import alias_version, artifact_paths, fetch_artifact, run_summary, snapshot_versions


@dataclass(frozen=True, kw_only=True)
class Predictions:
    """Final masks for some tiles, with the probabilities behind them where they were stored."""

    ids: np.ndarray  # (N,) str
    pred: np.ndarray  # (N, 101, 101) bool: the masks as submitted / scored
    probs: np.ndarray | None = None  # (N, 101, 101) float16 probabilities (out-of-fold sources only)
    threshold: float | None = None  # mean threshold ``pred`` was made with (before post-processing)
    fold: np.ndarray | None = None  # (N,) fold of each tile (ensembles: they threshold per fold)
    tile_threshold: np.ndarray | None = None  # (N,) the threshold each tile got

    def masks(self) -> dict[str, np.ndarray]:
        return dict(zip(self.ids.tolist(), self.pred, strict=True))


@dataclass(frozen=True, kw_only=True)
class RunOutput:
    """What one run (or file) predicted: out-of-fold train tiles and/or test tiles."""

    label: str  # a short human name, used in titles
    run_id: str | None
    role: str  # "fold" | "ensemble" | "submission"
    data_root: str | None
    oof: Predictions | None
    test: Predictions | None

    def masks(self) -> dict[str, np.ndarray]:
        """id -> final mask over every tile this output covers (train and test)."""
        out = self.test.masks() if self.test is not None else {}
        out.update(self.oof.masks() if self.oof is not None else {})
        return out


def data_root_of(run_id: str) -> str | None:
    """The dataset a fold run (tag) or an ensemble run (param) used."""
    return run_summary(run_id).data_root


def snapshot_predictions(run_id: str, oof_artifact: str, cache: Path, threshold: float = 0.5) -> Predictions:
    """A snapshot's stored out-of-fold probabilities, thresholded (``probs > threshold``)."""
    ids, probs = C.read_snapshot_oof(fetch_artifact(run_id, oof_artifact, cache))
    return Predictions(ids=ids.astype(str), pred=probs > threshold, probs=probs, threshold=threshold)


def ensemble_oof(run_id: str, cache: Path) -> Predictions:
    """The ensemble run's stored OOF output (``contract.EnsembleOOF``)."""
    if C.ENSEMBLE_OOF not in artifact_paths(run_id, C.ENSEMBLE_DIR):
        raise SaltError(f"ensemble run {run_id} has no {C.ENSEMBLE_OOF} (built before ensembles stored their OOF "
                        "output); build it again with `salt-exp ensemble --study <name>`")
    oof = C.read_ensemble_oof(fetch_artifact(run_id, C.ENSEMBLE_OOF, cache))
    mean_thr = float(oof.threshold.mean()) if len(oof.threshold) else None
    return Predictions(ids=oof.ids, pred=oof.pred, probs=oof.probs, threshold=mean_thr, fold=oof.fold,
                       tile_threshold=oof.threshold)


def _pick_snapshot(run_id: str, versions: list[SnapshotVersion], cycle: int | None) -> SnapshotVersion:
    if cycle is None:  # the best cycle; its SWA snapshot only when asked for (--cycle -1)
        return C.best_snapshot([v for v in versions if not v.swa] or versions)
    chosen = next((v for v in versions if v.cycle == cycle), None)
    if chosen is None:
        held = [f"{c} ({C.SWA_LABEL})" if c == C.SWA_CYCLE else str(c) for c in sorted(v.cycle for v in versions)]
        raise SaltError(f"--cycle {cycle}: run {run_id} has snapshots of cycles {', '.join(held)}")
    return chosen


def _fold_output(summary: RunSummary, cache: Path, cycle: int | None) -> RunOutput:
    run_id, tags = summary.run_id, summary.tags
    study = tags.get(Tag.STUDY, C.ADHOC)
    versions = [v for v in snapshot_versions(C.snapshot_model(study)) if v.run_id == run_id]
    if any(v.full_fit for v in versions):
        raise SaltError(f"--run {run_id}: a full-data fit (fold all) has no out-of-fold predictions to show; "
                        "pick one of its cv run's fold runs")
    if not versions:
        raise SaltError(f"--run {run_id}: this fold run registered no snapshot (did it finish a cycle?)")
    chosen = _pick_snapshot(run_id, versions, cycle)
    label = f"{study} trial {tags.get(Tag.TRIAL, C.NO_TRIAL)} fold {tags.get(Tag.FOLD)} {C.cycle_label(chosen.cycle)}"
    oof = snapshot_predictions(run_id, chosen.oof, cache)
    return RunOutput(label=label, run_id=run_id, role=Role.FOLD.value, data_root=summary.data_root, oof=oof, test=None)


def _ensemble_output(summary: RunSummary, cache: Path) -> RunOutput:
    run_id = summary.run_id
    subs = [p for p in artifact_paths(run_id, C.ENSEMBLE_DIR) if p.endswith(".csv")]
    test = None
    if subs:
        ids, masks = read_masks(fetch_artifact(run_id, subs[0], cache))
        test = Predictions(ids=ids, pred=masks.astype(bool))
    study = summary.study or "?"
    return RunOutput(label=f"{study} ensemble (run {run_id[:8]})", run_id=run_id, role=Role.ENSEMBLE.value,
                     data_root=summary.data_root, oof=ensemble_oof(run_id, cache), test=test)


def run_output(run_id: str, cache: Path, cycle: int | None = None) -> RunOutput:
    """Predictions of a fold run (its best or given cycle) or of an ensemble run."""
    summary = run_summary(run_id)
    if summary.role == Role.FOLD.value:
        return _fold_output(summary, cache, cycle)
    if summary.role == Role.ENSEMBLE.value:
        return _ensemble_output(summary, cache)
    raise SaltError(f"--run {run_id}: a {summary.role or 'non-salt-exp'} run; expected a fold run or an ensemble run")


def submission_output(path: str | Path) -> RunOutput:
    """Test masks of a submission CSV (id,rle_mask)."""
    ids, masks = read_masks(path)
    return RunOutput(label=Path(path).name, run_id=None, role="submission", data_root=None, oof=None,
                     test=Predictions(ids=ids, pred=masks.astype(bool)))


def champion_run(study: str) -> str:
    """Run id of the study's ensemble behind the alias ``champion`` of its ensemble model."""
    model = C.ensemble_model(study)
    v = alias_version(model, C.CHAMPION)
    record = C.EnsembleVersion.from_version(v) if v is not None else None
    if record is None:
        raise SaltError(f"study {study!r} has no champion ensemble (alias {C.CHAMPION} of {model}); "
                        f"build one with `make ensemble NAME={study}`")
    return record.ensemble_run
