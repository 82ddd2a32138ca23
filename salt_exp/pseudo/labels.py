"""Pseudo-labels of the test tiles, made the way the source ensemble makes its masks, without leaking.

The source ensemble mixes every fold's members, and its mosaic rules copy the train truth of neighbouring tiles
into test tiles. A fold trained on labels made that way would learn its validation tiles' truth (through their
members, and through the rules). So fold k's labels come from fold k's members alone (they never saw fold k's
validation tiles), thresholded at fold k's threshold, post-processed with the ensemble's rules while every train
tile except fold k's validation tiles serves as a known neighbour. The full-data labels (``FULL_FIT``: for a fit
on every tile, which validates nothing) are the whole ensemble's, with every train tile known.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from salt_exp.config import PseudoConfig
from salt_exp.contract import FULL_FIT, FoldPseudoLabels, SnapshotVersion, read_snapshot_oof
from salt_exp.data.context import ContextPool, TileContext
from salt_exp.data.kaggle import TileSet
from salt_exp.ensemble.predict import member_predictor
from salt_exp.errors import SaltError
from salt_exp.pseudo.confidence import DROPPED, EMPTY, NONEMPTY, audit, calibration, confidence_verdicts, ignore_map
from salt_exp.pseudo.source import SourceEnsemble
from salt_exp.serving.predictor import EnsemblePredictor, KnownTiles
from salt_exp.tracking import fetch_artifact

Seam = tuple[str, str]  # a vertical mosaic link (tile above, tile below) the rules must not carry across


@dataclass(frozen=True, kw_only=True)
class Labeller:
    """The test tiles to label, the labelled train tiles and mosaic table the rules read, and the rules."""

    test: TileSet
    train: TileSet
    frame: pd.DataFrame | None  # mosaic table (id, x, y, mosaic_id); None: no rule can apply
    rules: tuple[str, ...]
    broken: tuple[Seam, ...] = ()
    confidence: PseudoConfig
    pool: ContextPool | None = None  # the neighbour images context members read (None: every tile padded alone)
    calibration: dict = field(default_factory=dict)  # fold -> confidence.calibration of its labels (filled by label)
    audits: dict = field(default_factory=dict)  # fold -> confidence.audit on its validation tiles (filled by audit_fold)

    def predictor(self, groups: Sequence[Sequence[object]], *, threshold: float,
                  hidden: Sequence[str] = ()) -> EnsemblePredictor:
        """An ensemble of ``groups`` (snapshot predictors) whose rules see every train tile but ``hidden``."""
        keep = ~np.isin(self.train.ids, np.asarray(list(hidden), dtype=str))
        known = None
        if self.frame is not None:
            known = KnownTiles.from_tiles(self.train.ids[keep], self.train.masks[keep], self.train.blank[keep], self.frame)
        seams = {"broken": self.broken} if self.broken else {}  # the jigsaw seam check, where the ensemble had one
        return EnsemblePredictor(groups, threshold=threshold, rules=self.rules, known=known, mosaics=self.frame, **seams)

    def context(self, hidden: Sequence[str] = ()) -> TileContext | None:
        """The test tiles' context for a context member: ``hidden`` (fold k's validation tiles) not even as
        neighbour images, since fold k then trains on these labels."""
        if self.pool is None:
            return None
        return TileContext(self.pool, self.test.ids.astype(str).tolist(), frozenset(np.asarray(hidden).astype(str).tolist()))

    def label(self, predictor: EnsemblePredictor, probs: np.ndarray, fold: int) -> FoldPseudoLabels:
        """The kept tiles of (N, 101, 101) test probabilities: ``predictor``'s masks, the confidence rules."""
        masks = predictor.masks_from_probs(probs, self.test.images, ids=self.test.ids.tolist())
        verdict = confidence_verdicts(probs, masks, self.confidence)
        self.calibration[fold] = calibration(probs, masks, self.confidence)
        kept = verdict != DROPPED
        ignore = ignore_map(probs, masks, verdict, float(predictor.threshold), self.confidence)
        return FoldPseudoLabels(fold=fold, ids=self.test.ids[kept], masks=np.asarray(masks)[kept].astype(np.uint8),
                                threshold=float(predictor.threshold), kept_empty=int((verdict == EMPTY).sum()),
                                kept_nonempty=int((verdict == NONEMPTY).sum()), dropped=int((~kept).sum()),
                                ignore=None if ignore is None else ignore[kept])

    def audit_fold(self, members: Sequence[object], *, fold: int, threshold: float,
                   hidden: Sequence[str]) -> dict[str, float]:
        """The confidence rules on fold ``fold``'s validation tiles (``hidden``), predicted as :meth:`fold_labels`
        predicts the test tiles (its members, h-flip TTA, its threshold, the rules with ``hidden`` unseen as known
        neighbours) and scored against their truth: how good the labels the round trains on would be."""
        pos = self.train.position(np.asarray(hidden).astype(str).tolist())
        ids = self.train.ids[pos].astype(str)
        context = None
        if self.pool is not None:  # as the ensemble's OOF: the other folds' train tiles are absent neighbours
            others = self.train.ids[~np.isin(self.train.ids, ids)].astype(str)
            context = TileContext(self.pool, ids.tolist(), frozenset(others.tolist()))
        predictor = self.predictor([members], threshold=threshold, hidden=hidden)
        probs = predictor.probs(self.train.images[pos], self.train.depths[pos], context=context)
        masks = predictor.masks_from_probs(probs, self.train.images[pos], ids=ids.tolist())
        self.audits[fold] = audit(probs, masks, self.train.masks[pos], float(predictor.threshold), self.confidence)
        return self.audits[fold]

    def fold_labels(self, members: Sequence[object], *, fold: int, threshold: float,
                    hidden: Sequence[str]) -> tuple[FoldPseudoLabels, np.ndarray]:
        """Fold ``fold``'s labels from its own ``members`` at its ``threshold``, its validation tiles (``hidden``)
        unseen by the rules; and the members' mean test probabilities (N, 101, 101) float32."""
        predictor = self.predictor([members], threshold=threshold, hidden=hidden)
        probs = predictor.probs(self.test.images, self.test.depths, context=self.context(hidden))
        return self.label(predictor, probs, fold), probs


def check_member_folds(members: dict[int, Sequence[SnapshotVersion]], val_ids: dict[int, np.ndarray], cache: Path) -> None:
    """Each fold member validated on exactly this config's fold tiles (its stored OOF ids), else fold k's labels
    could come from a model that trained on fold k's validation tiles: one-line SaltError."""
    for fold, ms in members.items():
        for m in ms:
            ids, _ = read_snapshot_oof(fetch_artifact(m.run_id, m.oof, cache))
            if sorted(ids.astype(str).tolist()) != sorted(np.asarray(val_ids.get(fold, [])).astype(str).tolist()):
                raise SaltError(f"{m.key} (fold {fold}) validated on other tiles than this config's fold {fold}: its "
                                "folds differ (data.root, folds_scheme, n_folds or folds_seed), so its labels would leak")


def make_labels(source: SourceEnsemble, labeller: Labeller, val_ids: dict[int, np.ndarray], cache: Path,
                device: str = "auto") -> dict[int, FoldPseudoLabels]:
    """Every fold's labels from its own members (see the module docstring), then the full-data labels (FULL_FIT)
    from the whole ensemble as its registered model predicts: the mean over its groups (the folds, and its
    full-data fits as one more group), or its full-data fits alone."""
    groups = {f: [member_predictor(m, cache, device) for m in ms] for f, ms in sorted(source.members.items())}
    out, total = {}, 0.0  # a running sum: one fold's probabilities in memory at a time
    for fold in source.fold_members():
        out[fold], probs = labeller.fold_labels(groups[fold], fold=fold, threshold=source.fold_thresholds[fold],
                                                hidden=val_ids[fold])
        labeller.audit_fold(groups[fold], fold=fold, threshold=source.fold_thresholds[fold], hidden=val_ids[fold])
        total = total + probs
    used = [g for f, g in groups.items() if f != FULL_FIT]
    if FULL_FIT in groups:
        full = labeller.predictor([groups[FULL_FIT]], threshold=source.threshold)
        probs = full.probs(labeller.test.images, labeller.test.depths, context=labeller.context())
        total, used = (probs, [groups[FULL_FIT]]) if source.full_fit_only else (total + probs, [*used, groups[FULL_FIT]])
    every = labeller.predictor(used, threshold=source.threshold)
    out[FULL_FIT] = labeller.label(every, (total / len(used)).astype(np.float32), FULL_FIT)
    return out
