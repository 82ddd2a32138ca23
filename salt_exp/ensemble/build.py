"""``salt-exp ensemble``: registry selection -> OOF score -> post-processing -> test prediction -> submission.

Everything the ensemble used and measured goes to one MLflow run (``salt.role=ensemble``) and
the ensemble is registered as a version of ``salt-<study>-ensemble`` (alias ``champion``) whose
tags pin its member versions. The submission is written by the same
:class:`~salt_exp.serving.predictor.EnsemblePredictor` the registered pyfunc model runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from salt_exp import contract as C
from salt_exp.data.kaggle import KaggleData, load_kaggle
from salt_exp.data.rle import rle_encode
from salt_exp.ensemble.mosaic import MosaicIndex
from salt_exp.ensemble.oof import OOFResult, evaluate_oof
from salt_exp.ensemble.options import EnsembleOptions
from salt_exp.ensemble.postprocess import RULE_ORDER, apply_rules, measure_rules
from salt_exp.ensemble.predict import group_predictors
from salt_exp.ensemble.select import Member, select_full_fits, select_members
from salt_exp.errors import SaltError
from salt_exp.io import atomic_open
from salt_exp.metrics import image_scores
from salt_exp.serving.predictor import EnsemblePredictor, KnownTiles
from salt_exp.stores import submission_path
from salt_exp.tracking import run_summary


@dataclass(frozen=True, kw_only=True)
class EnsembleSpec:
    study: str
    models: tuple[str, ...]  # registered snapshot models (pipelines) to draw members from
    options: EnsembleOptions = field(default_factory=EnsembleOptions)
    data: str | None = None  # default: the data root the members were trained on
    out: str | None = None  # default: submissions/<study>.csv
    device: str = "auto"

    @classmethod
    def for_study(cls, study: str, models: Sequence[str] = (), **kwargs: Any) -> EnsembleSpec:
        """The spec of ``study`` over ``models`` (default: the study's own snapshot model)."""
        return cls(study=study, models=tuple(models) or (C.snapshot_model(study),), **kwargs)

    @property
    def top_k(self) -> int:
        return self.options.top_cycles

    @property
    def threshold(self) -> str | float:
        return self.options.threshold

    @property
    def postprocess(self) -> str:
        return self.options.postprocess


@dataclass(frozen=True, kw_only=True)
class EnsembleResult:
    selection: dict[int, list[Member]]
    oof: OOFResult
    rule_gains: list[dict]
    rules: list[str]
    oof_post: float
    post_pred: np.ndarray  # (N, 101, 101) uint8 OOF masks after the applied rules, in oof.ids order
    submission: Path | None
    test_threshold: float
    full_fit: list[Member] = field(default_factory=list)  # full-data fits in the test prediction (not in the OOF)
    groups: dict[int, list[Member]] = field(default_factory=dict)  # what predicts the test tiles: folds (+ FULL_FIT)
    predictor: EnsemblePredictor | None = None  # the test-time ensemble (the registered model runs the same)


def mosaic_table(data: KaggleData) -> tuple[pd.DataFrame | None, str]:
    """The mosaic table (id, x, y, mosaic_id) from mosaics.csv, else reconstructed from tile edges by the jigsaw
    solver; None when neither places a tile."""
    if data.mosaics is not None:
        return data.mosaics, "mosaics.csv"
    from salt_exp.ensemble.jigsaw import solve_jigsaw

    tiles = [data.train] + ([data.test] if data.test is not None else [])
    ids = np.concatenate([t.ids for t in tiles])
    frame = solve_jigsaw(ids, np.concatenate([t.images for t in tiles]))
    return (frame, "jigsaw") if len(frame) else (None, "none")


def mosaic_index(data: KaggleData) -> tuple[MosaicIndex | None, str]:
    """Mosaics from mosaics.csv, else reconstructed from tile edges by the jigsaw solver."""
    frame, source = mosaic_table(data)
    return (MosaicIndex.from_frame(frame) if frame is not None else None), source


def choose_rules(spec: str, gains: list[dict]) -> list[str]:
    if spec == "none":
        return []
    if spec == "auto":
        return [g["rule"] for g in gains if g["rule"] in RULE_ORDER and g["gain"] > 0]
    rules = [r.strip() for r in spec.split(",") if r.strip()]
    unknown = [r for r in rules if r not in RULE_ORDER]
    if unknown:
        raise SaltError(f"--postprocess: unknown rule {unknown[0]!r}; valid: auto, none or a comma list of {', '.join(RULE_ORDER)}")
    return rules


def _data_for(spec: EnsembleSpec, selection: dict[int, list[Member]]) -> KaggleData:
    root = spec.data or run_summary(next(iter(selection.values()))[0].run_id).data_root
    if not root:
        raise SaltError("--data is needed: the member runs do not record their data root")
    return load_kaggle(root)


def write_submission(path: Path, ids: Sequence[str], masks: np.ndarray) -> Path:
    """The Kaggle submission (id,rle_mask), written atomically."""
    frame = pd.DataFrame({"id": list(ids), "rle_mask": [rle_encode(m) for m in masks]})
    with atomic_open(path, "w", newline="") as fh:
        frame.to_csv(fh, index=False)
    return path


def build_ensemble(spec: EnsembleSpec, cache: Path) -> tuple[EnsembleResult, KaggleData]:
    selection = select_members(spec.models, spec.top_k)
    full = [] if spec.options.full_fit == "exclude" else select_full_fits(spec.models, spec.top_k)
    if spec.options.full_fit == "only" and not full:
        raise SaltError(f"full_fit: only, but {', '.join(spec.models)} hold no full-data fit; "
                        "train one with `salt-exp cv CONFIG --full-fit`")
    data = _data_for(spec, selection)
    oof = evaluate_oof(selection, data.train, spec.threshold, cache)
    frame, _ = mosaic_table(data)
    index = MosaicIndex.from_frame(frame) if frame is not None else None
    truth = data.train.masks[data.train.position(oof.ids)]
    images = data.train.images[data.train.position(oof.ids)]
    gains = measure_rules(oof.pred, truth, oof.ids, images, index=index, rules=list(RULE_ORDER)) if index is not None else []
    rules = choose_rules(spec.postprocess, gains)
    post = apply_rules(oof.pred, oof.ids, images, index, rules=rules) if rules else oof.pred
    oof_post = float(image_scores(post, truth).mean())
    thr = float(np.mean([f.threshold for f in oof.folds]))
    if spec.options.full_fit == "only":
        thr = float(np.mean([m.val_best_thr for m in full]))  # the threshold their cv runs chose
    groups = {C.FULL_FIT: full} if spec.options.full_fit == "only" else {**selection, **({C.FULL_FIT: full} if full else {})}
    # the labelled tiles as the test tiles' mosaic neighbours: what the registered model carries for its rules
    known = KnownTiles.from_tiles(data.train.ids, data.train.masks, data.train.blank, frame) if frame is not None else None
    predictor = EnsemblePredictor(group_predictors(groups, cache, spec.device), threshold=thr, rules=rules,
                                  known=known, mosaics=frame,
                                  fold_thresholds={str(f.fold): float(f.threshold) for f in oof.folds})
    submission = None
    if data.test is not None:
        pred = predictor.predict(data.test.images, ids=data.test.ids.tolist(), depths=data.test.depths)
        submission = write_submission(Path(spec.out) if spec.out else submission_path(spec.study), data.test.ids, pred)
    result = EnsembleResult(selection=selection, oof=oof, rule_gains=gains, rules=rules, oof_post=oof_post,
                            post_pred=post, submission=submission, test_threshold=thr, full_fit=full,
                            groups=groups, predictor=predictor)
    return result, data
