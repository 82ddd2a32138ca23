"""``salt-exp ensemble``: registry selection -> OOF score -> post-processing -> test prediction -> submission.

Everything the ensemble used and measured goes to one MLflow run (``salt.role=ensemble``) and
the ensemble is registered as a version of ``salt-<study>-ensemble`` (alias ``champion``) whose
tags pin its member versions. The submission is written by the same
:class:`~salt_exp.serving.predictor.EnsemblePredictor` the registered pyfunc model runs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from salt_exp import contract as C
from salt_exp.data.context import ContextPool, TileContext
from salt_exp.data.kaggle import KaggleData, load_kaggle
from salt_exp.data.rle import rle_encode
from salt_exp.ensemble.jigsaw import untrusted_seams
from salt_exp.ensemble.mosaic import MosaicIndex
from salt_exp.ensemble.oof import MemberOOF, OOFResult, evaluate_oof, greedy_members, pick_threshold
from salt_exp.ensemble.options import EnsembleOptions
from salt_exp.ensemble.postprocess import RULE_ORDER, Neighbours, apply_rules, rule_gains
from salt_exp.ensemble.predict import group_predictors
from salt_exp.ensemble.select import Member, select_full_fits, select_members
from salt_exp.ensemble.waterfall import Waterfall
from salt_exp.errors import SaltError
from salt_exp.faults import fault_point
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
    folds: tuple[int, ...] = ()  # only these folds' snapshots (default: every fold the models hold)

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
    waterfall: Waterfall | None = None  # each step's OOF gain, best single snapshot to the final masks
    broken_seams: int = 0  # vertical mosaic links the jigsaw seam check cut
    left_out: list[Member] = field(default_factory=list)  # candidates the greedy selection did not take


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
    """The Kaggle submission (id,rle_mask), written atomically: to a temporary sibling, renamed when complete, so a
    killed process never leaves a half-written ``submissions/<study>.csv`` (fault point ``submission.half_written``)."""
    frame = pd.DataFrame({"id": list(ids), "rle_mask": [rle_encode(m) for m in masks]})
    half = len(frame) // 2
    with atomic_open(path, "w", newline="") as fh:
        frame.iloc[:half].to_csv(fh, index=False)
        fh.flush()
        fault_point("submission.half_written")
        frame.iloc[half:].to_csv(fh, index=False, header=False)
    return path


class _Progress:
    """One log line per member that has predicted its ``tiles`` (an ensemble on real data on a CPU takes minutes)."""

    def __init__(self, members: int, tiles: int, what: str) -> None:
        self.members, self.tiles, self.what, self.seen, self.t0 = members, tiles, what, 0, time.perf_counter()

    def __call__(self, n: int) -> None:
        self.seen += n
        if self.tiles and self.seen % self.tiles == 0:
            done = self.seen // self.tiles
            print(f"[ensemble] {self.what}: {done}/{self.members} snapshots predicted {self.tiles} tiles "
                  f"({time.perf_counter() - self.t0:.0f} s)", flush=True)


def _neighbours(ids, masks, images) -> Neighbours | None:
    return Neighbours([str(i) for i in ids], masks, images) if len(ids) else None


def build_ensemble(spec: EnsembleSpec, cache: Path) -> tuple[EnsembleResult, KaggleData]:
    """Select, score out of fold (with the members' TTA where ``oof_tta``), predict the test tiles, choose the
    rules on OOF with the test predictions as neighbours, write the submission; every step into the waterfall."""
    opts = spec.options
    selection = select_members(spec.models, spec.top_k, swa=opts.swa, folds=spec.folds)
    full = [] if opts.full_fit == "exclude" else select_full_fits(spec.models, spec.top_k)
    if opts.full_fit == "only" and not full:
        raise SaltError(f"full_fit: only, but {', '.join(spec.models)} hold no full-data fit; "
                        "train one with `salt-exp cv CONFIG --full-fit`")
    data = _data_for(spec, selection)
    pool = ContextPool.from_data(data)  # the neighbour images context members read
    members = MemberOOF(data.train, cache, spec.device, pool=pool)
    candidates = selection
    if opts.selection == "greedy":
        selection = greedy_members(selection, members.source(opts.oof_tta), data.train, spec.threshold)
    oof = evaluate_oof(selection, data.train, spec.threshold, cache, source=members.source(opts.oof_tta))
    pos = data.train.position(oof.ids)
    truth, images = data.train.masks[pos], data.train.images[pos]
    fold_of = np.concatenate([np.full(len(f.ids), f.fold) for f in oof.folds])
    frame, _ = mosaic_table(data)
    index = MosaicIndex.from_frame(frame) if frame is not None else None
    thr = float(np.mean([f.threshold for f in oof.folds]))
    if opts.full_fit == "only":
        thr = float(np.mean([m.val_best_thr for m in full]))  # the threshold their cv runs chose
    groups = {C.FULL_FIT: full} if opts.full_fit == "only" else {**selection, **({C.FULL_FIT: full} if full else {})}
    # the labelled tiles as the test tiles' mosaic neighbours: what the registered model carries for its rules
    known = KnownTiles.from_tiles(data.train.ids, data.train.masks, data.train.blank, frame) if frame is not None else None
    predictor = EnsemblePredictor(group_predictors(groups, cache, spec.device), threshold=thr, rules=(),
                                  known=known, mosaics=frame,
                                  fold_thresholds={str(f.fold): float(f.threshold) for f in oof.folds})
    test_probs = None
    if data.test is not None:
        test_probs = predictor.probs(data.test.images, data.test.depths, context=TileContext(pool, data.test.ids.tolist()),
                                     progress=_Progress(len(predictor.members), len(data.test.ids), "test tiles"))

    # the rules, measured on OOF with the neighbours the test prediction has (see OOFRules)
    test_ctx = None
    if opts.test_context and test_probs is not None and index is not None:
        test_ctx = _neighbours(data.test.ids, (test_probs > thr).astype(np.uint8), data.test.images)
    broken: set[tuple[str, str]] = set()
    if index is not None and opts.seam_max_cost < 2.0:
        tiles = dict(zip(data.train.ids.tolist(), data.train.images, strict=True))
        if data.test is not None:
            tiles.update(zip(data.test.ids.tolist(), data.test.images, strict=True))
        broken = untrusted_seams(index, tiles, opts.seam_max_cost)
    oof_rules = OOFRules.build(oof.ids, images, fold_of, index, data.train, test_ctx, broken) if index is not None else None
    gains = oof_rules.gains(oof.pred, truth, list(RULE_ORDER)) if oof_rules is not None else []
    rules = choose_rules(spec.postprocess, gains)
    post = oof_rules.apply(oof.pred, rules) if rules else oof.pred
    oof_post = float(image_scores(post, truth).mean())
    left_out = [m for f, ms in candidates.items() for m in ms if m not in selection[f]]
    waterfall = build_waterfall(spec, selection, members, oof, truth, fold_of, oof_rules=oof_rules, rules=rules,
                                post=post, candidates=candidates, left_out=left_out)

    predictor.rules, predictor.broken = tuple(rules), frozenset(broken)
    submission = None
    if data.test is not None:
        pred = predictor.masks_from_probs(test_probs, data.test.images, data.test.ids.tolist())
        submission = write_submission(Path(spec.out) if spec.out else submission_path(spec.study), data.test.ids, pred)
    result = EnsembleResult(selection=selection, oof=oof, rule_gains=gains, rules=rules, oof_post=oof_post,
                            post_pred=post, submission=submission, test_threshold=thr, full_fit=full,
                            groups=groups, predictor=predictor, waterfall=waterfall, broken_seams=len(broken),
                            left_out=left_out)
    return result, data


@dataclass(frozen=True)
class OOFRules:
    """The rules on out-of-fold masks, with the neighbours a test tile has at test time.

    A test tile's mosaic neighbours are labelled tiles (their truth) and other test tiles (predictions). An
    OOF tile of fold k gets the same: the labelled tiles outside fold k as truth (fold k's models never saw
    fold k's truth, and no tile's own truth is read), the other tiles of fold k as their OOF predictions,
    and the test tiles' predictions (``test``). Rules run fold by fold.
    """

    ids: np.ndarray
    images: np.ndarray
    fold_of: np.ndarray
    index: MosaicIndex
    labelled: Neighbours | None  # the train tiles that sit in a mosaic: truth
    test: Neighbours | None
    broken: frozenset[tuple[str, str]]

    @classmethod
    def build(cls, ids, images, fold_of, index: MosaicIndex, train, test: Neighbours | None,
              broken) -> OOFRules:
        placed = np.array([str(i) in index for i in train.ids], bool)
        labelled = _neighbours(train.ids[placed], train.masks[placed], train.images[placed])
        return cls(np.asarray(ids).astype(str), images, np.asarray(fold_of), index, labelled, test, frozenset(broken))

    contexts: dict = field(default_factory=dict, compare=False, repr=False)  # (fold, test) -> Neighbours, built once

    def context(self, fold: int, test: bool) -> Neighbours | None:
        """What fold ``fold``'s tiles read: the labelled tiles outside it (truth) and, with ``test``, the test tiles."""
        if (fold, test) not in self.contexts:
            truth = self.labelled.without(self.ids[self.fold_of == fold]) if self.labelled is not None else None
            self.contexts[(fold, test)] = Neighbours.join(truth, self.test if test else None)
        return self.contexts[(fold, test)]

    def apply(self, pred: np.ndarray, rules: list[str], *, test: bool = True, seams: bool = True) -> np.ndarray:
        out = np.array(pred, copy=True)
        for f in np.unique(self.fold_of):
            sel = self.fold_of == f
            out[sel] = apply_rules(pred[sel], self.ids[sel].tolist(), self.images[sel], self.index, rules=rules,
                                   context=self.context(f, test), broken=self.broken if seams else ())
        return out

    def gains(self, pred: np.ndarray, truth: np.ndarray, rules: list[str]) -> list[dict]:
        """Each rule alone against the same baseline, then all together (the rows of ``measure_rules``)."""
        return rule_gains(pred, truth, rules, lambda run: self.apply(pred, run))


def build_waterfall(spec: EnsembleSpec, selection: dict[int, list[Member]], members: MemberOOF, oof: OOFResult,
                    truth: np.ndarray, fold_of: np.ndarray, *, oof_rules: OOFRules | None, rules: list[str],
                    post: np.ndarray, candidates: dict[int, list[Member]] | None = None,
                    left_out: Sequence[Member] = ()) -> Waterfall:
    """The ensemble's steps out of fold, each adding one thing (see :mod:`salt_exp.ensemble.waterfall`); the last
    chained step is the ensemble's final OOF masks (``post``)."""
    opts = spec.options
    wf = Waterfall(truth, fold_of)
    candidates = candidates or selection

    def fold_masks(pick, tta: bool, threshold) -> np.ndarray:
        """Per fold: the mean probabilities of ``pick(fold members)`` thresholded by ``threshold`` (searched or fixed)."""
        out = []
        for f in oof.folds:
            chosen = pick(selection[f.fold])
            probs = np.mean([members.source(tta)(m)[1] for m in chosen], axis=0)
            t = pick_threshold(probs, truth[fold_of == f.fold], threshold)[0]
            out.append(probs > t)
        return np.concatenate(out).astype(np.uint8)

    def best(ms: list[Member]) -> list[Member]:
        return [min(ms, key=lambda m: (-m.val_map, int(m.version or 0)))]

    def cycles(ms: list[Member]) -> list[Member]:
        return [m for m in ms if not m.swa] or ms

    wf.add("single", "best single snapshot @0.5", fold_masks(best, False, 0.5),
           note="per fold, the member with the highest val_map, its stored (one-view) OOF at threshold 0.5")
    if spec.threshold == "search":
        wf.add("threshold", "+ threshold search", fold_masks(best, False, "search"))
    if any(len(cycles(ms)) > 1 for ms in selection.values()):
        how = "greedy" if spec.options.selection == "greedy" else "all"
        wf.add("snapshots", f"+ snapshots ({how}, <= {spec.top_k} per fold)", fold_masks(cycles, False, spec.threshold))
    if left_out:
        wf.side("all_candidates", f"(all top-{spec.top_k}, not taken)", fold_masks(lambda ms: candidates[ms[0].fold], False,
                                                                           spec.threshold),
                note="the mean of every candidate snapshot; the greedy selection left out "
                + ", ".join(f"{m.key} (fold {m.fold})" for m in left_out))
    if any(m.swa for ms in selection.values() for m in ms):
        wf.add("swa", "+ SWA snapshots", fold_masks(lambda ms: ms, False, spec.threshold))
    if opts.oof_tta:
        wf.add("tta", "+ h-flip TTA", fold_masks(lambda ms: ms, True, spec.threshold))
    wf.note("folds", "+ fold groups (test only)",
            f"the test prediction averages {len(selection)} fold group(s); each OOF tile has its own fold's members only")
    if oof_rules is not None and rules:
        for k, rule in enumerate(rules):
            wf.add(f"rule_{rule}", f"+ rule {rule}", oof_rules.apply(oof.pred, rules[: k + 1], test=False, seams=False),
                   note="neighbours: labelled tiles outside the fold (truth) and the fold's OOF tiles")
        if oof_rules.test is not None:
            wf.add("test_context", "+ test tiles as neighbours", oof_rules.apply(oof.pred, rules, seams=False),
                   note=f"{len(oof_rules.test)} test-tile predictions read by the rules")
        if oof_rules.broken:
            wf.add("seam_check", "+ jigsaw seam check", post,
                   note=f"{len(oof_rules.broken)} vertical links with image edges that do not continue "
                   f"(cost > {spec.options.seam_max_cost})")
    else:
        wf.note("rules", "+ post-processing rules", "no rule applied" if oof_rules is not None else "no mosaic table")
    source = pseudo_source(selection)
    if source is not None:
        label, other = source
        wf.compare("pseudo", f"pseudo-labels vs {label}", other,
                   note="this ensemble (trained on pseudo-labels) against the ensemble whose labels it trained on, "
                   "fold by fold")
    last = [s for s in wf.steps if s.chained and s.score is not None][-1]
    assert abs(last.score - float(image_scores(post, truth).mean())) < 1e-9, "the waterfall must end at the ensemble"
    return wf


def pseudo_source(selection: dict[int, list[Member]]) -> tuple[str, dict[int, float]] | None:
    """When every member trained on pseudo-labels of one ensemble version: (that version, its final per-fold OOF
    scores) from its ensemble run; None otherwise (or when that run is not in this store)."""
    from salt_exp.tracking import ensemble_versions, run_summary

    runs = {m.run_id for ms in selection.values() for m in ms}
    tags = {run_summary(r).tags.get(C.Tag.PSEUDO_ENSEMBLE, "") for r in runs}
    if len(tags) != 1 or not next(iter(tags)):
        return None
    name, _, version = next(iter(tags)).rpartition("/v")
    try:
        record = next(v for v in ensemble_versions(name) if v.version == version)
        metrics = run_summary(record.ensemble_run).metrics
    except Exception:  # noqa: BLE001 - another store, a deleted model: nothing to compare with
        return None
    folds = {}
    for f in selection:
        value = metrics.get(f"fold{f}_oof_map_final", metrics.get(f"fold{f}_oof_map"))
        if value is not None:
            folds[f] = float(value)
    return (f"{name} v{version}", folds) if folds else None
