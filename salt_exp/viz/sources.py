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

from salt_exp.errors import SaltError
from salt_exp.scoring import read_masks
from salt_exp.tracking import alias_version, artifact_paths, download_run_artifact, registry_versions, run_summary

ENSEMBLE_OOF = "ensemble/oof.npz"


@dataclass(frozen=True)
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


@dataclass(frozen=True)
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
    """The dataset a fold run (tag salt.data_root) or an ensemble run (param data_root) used."""
    summary = run_summary(run_id)
    return summary["tags"].get("salt.data_root") or summary["params"].get("data_root")


def _fetch(run_id: str, artifact: str, cache: Path) -> Path:
    local = cache / run_id / artifact
    if not local.exists():
        local.parent.mkdir(parents=True, exist_ok=True)
        download_run_artifact(run_id, artifact, local.parent)
    return local


def snapshot_predictions(run_id: str, oof_artifact: str, cache: Path, threshold: float = 0.5) -> Predictions:
    """A snapshot's stored out-of-fold probabilities, thresholded (``probs > threshold``)."""
    with np.load(_fetch(run_id, oof_artifact, cache), allow_pickle=False) as z:
        ids, probs = z["ids"].astype(str), z["probs"]
    return Predictions(ids, probs > threshold, probs, threshold)


def ensemble_oof(run_id: str, cache: Path) -> Predictions:
    """The ensemble run's stored OOF output (see salt_exp.ensemble.track.save_oof)."""
    if ENSEMBLE_OOF not in artifact_paths(run_id, "ensemble"):
        raise SaltError(f"ensemble run {run_id} has no {ENSEMBLE_OOF} (built before ensembles stored their OOF "
                        "output); build it again with `salt-exp ensemble --study <name>`")
    with np.load(_fetch(run_id, ENSEMBLE_OOF, cache), allow_pickle=False) as z:
        ids, probs, thr = z["ids"].astype(str), z["probs"], z["threshold"]
        pred = np.unpackbits(z["pred"], axis=-1, count=probs.shape[-1]).astype(bool)
        fold = z["fold"].astype(np.int64)
    return Predictions(ids, pred, probs, float(thr.mean()) if len(thr) else None, fold, thr)


def _fold_output(run_id: str, summary: dict, cache: Path, cycle: int | None) -> RunOutput:
    tags = summary["tags"]
    versions = [v for v in registry_versions(f"salt-{tags.get('salt.study', 'adhoc')}") if v["run_id"] == run_id]
    if not versions:
        raise SaltError(f"--run {run_id}: this fold run registered no snapshot (did it finish a cycle?)")
    if cycle is None:
        chosen = max(versions, key=lambda v: (float(v["tags"]["val_map"]), -int(v["tags"]["cycle"])))
    else:
        chosen = next((v for v in versions if int(v["tags"]["cycle"]) == cycle), None)
        if chosen is None:
            have = sorted(int(v["tags"]["cycle"]) for v in versions)
            raise SaltError(f"--cycle {cycle}: run {run_id} has snapshots of cycles {have}")
    c = int(chosen["tags"]["cycle"])
    label = f"{tags.get('salt.study', '?')} trial {tags.get('salt.trial', 'none')} fold {tags.get('salt.fold')} cycle {c}"
    oof = snapshot_predictions(run_id, chosen["tags"]["oof"], cache)
    return RunOutput(label, run_id, "fold", tags.get("salt.data_root"), oof, None)


def _ensemble_output(run_id: str, summary: dict, cache: Path) -> RunOutput:
    subs = [p for p in artifact_paths(run_id, "ensemble") if p.endswith(".csv")]
    test = None
    if subs:
        ids, masks = read_masks(_fetch(run_id, subs[0], cache))
        test = Predictions(ids, masks.astype(bool))
    study = summary["tags"].get("salt.study", "?")
    return RunOutput(f"{study} ensemble (run {run_id[:8]})", run_id, "ensemble", summary["params"].get("data_root"),
                     ensemble_oof(run_id, cache), test)


def run_output(run_id: str, cache: Path, cycle: int | None = None) -> RunOutput:
    """Predictions of a fold run (its best or given cycle) or of an ensemble run."""
    summary = run_summary(run_id)
    role = summary["tags"].get("salt.role")
    if role == "fold":
        return _fold_output(run_id, summary, cache, cycle)
    if role == "ensemble":
        return _ensemble_output(run_id, summary, cache)
    raise SaltError(f"--run {run_id}: a {role or 'non-salt-exp'} run; expected a fold run or an ensemble run")


def submission_output(path: str | Path) -> RunOutput:
    """Test masks of a submission CSV (id,rle_mask)."""
    ids, masks = read_masks(path)
    return RunOutput(Path(path).name, None, "submission", None, None, Predictions(ids, masks.astype(bool)))


def champion_run(study: str) -> str:
    """Run id of the study's ensemble behind the alias ``champion`` of ``salt-<study>-ensemble``."""
    v = alias_version(f"salt-{study}-ensemble", "champion")
    if v is None or "ensemble_run" not in v["tags"]:
        raise SaltError(f"study {study!r} has no champion ensemble (alias champion of salt-{study}-ensemble); "
                        f"build one with `make ensemble NAME={study}`")
    return v["tags"]["ensemble_run"]
