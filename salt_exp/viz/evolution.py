"""How a study's predictions of one mosaic evolved: an animated GIF of its snapshots and ensembles in
chronological order, keeping only the frames that improved the mosaic's score.

Frames (all read from the registry, nothing is predicted again):

- one per (trial, cycle) of ``salt-<study>``: the best snapshot of that cycle of every fold the trial
  ran, joined into one out-of-fold prediction (a fold run outside a trial is its own group); shown at
  0.5 like the logged val_map; dated by its newest version;
- one per version of ``salt-<study>-ensemble``: the ensemble's stored, post-processed OOF masks.

Frames are compared on the same tiles: for a mosaic, only the frames covering the most of its train
tiles take part (a pruned trial that ran fewer folds drops out). The first of them is kept, then
every frame whose mean tile score beats the best so far.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from salt_exp import contract as C
from salt_exp.contract import SnapshotVersion, Tag
from salt_exp.errors import SaltError
from salt_exp.io import atomic_path
from salt_exp.metrics import image_scores
from salt_exp.tracking import ensemble_versions, run_summary, snapshot_versions
from salt_exp.viz.sources import ensemble_oof, snapshot_predictions


@dataclass(frozen=True)
class Frame:
    """One step of the study: where its out-of-fold masks are stored."""

    label: str
    created_ms: int
    parts: tuple[tuple[str, str], ...]  # (run_id, oof artifact); contract.ENSEMBLE_OOF for an ensemble run


def study_frames(study: str) -> list[Frame]:
    """Every (trial, cycle) group of snapshots and every ensemble of ``study``, oldest first.

    Fold runs outside a trial are grouped by their config hash: the folds of one config form one frame.
    """
    groups: dict[tuple[str, int], list[SnapshotVersion]] = defaultdict(list)
    config_of: dict[str, str] = {}
    for v in snapshot_versions(C.snapshot_model(study)):
        if v.full_fit:  # no out-of-fold predictions to draw
            continue
        if v.trial == C.NO_TRIAL and v.run_id not in config_of:
            config_of[v.run_id] = run_summary(v.run_id).tags.get(Tag.CONFIG_HASH, v.run_id)[:8]
        who = f"trial {v.trial}" if v.trial != C.NO_TRIAL else f"config {config_of[v.run_id]}"
        groups[(who, v.cycle)].append(v)
    frames = []
    for (who, cycle), vs in groups.items():
        folds = ",".join(sorted({str(v.fold) for v in vs}))
        frames.append(Frame(f"{who} {C.cycle_label(cycle)} (folds {folds})", max(v.created_ms for v in vs),
                            tuple((v.run_id, v.oof) for v in vs)))
    for e in ensemble_versions(C.ensemble_model(study)):
        frames.append(Frame(f"ensemble v{e.version}", e.created_ms, ((e.ensemble_run, C.ENSEMBLE_OOF),)))
    if not frames:
        raise SaltError(f"study {study!r} has no registered snapshots or ensembles ({C.snapshot_model(study)}); "
                        "run the study first")
    return sorted(frames, key=lambda f: (f.created_ms, f.label))


def frame_masks(frames: Sequence[Frame], wanted: set[str], cache: Path) -> list[dict[str, np.ndarray]]:
    """Per frame, id -> final mask for the ``wanted`` ids it covers; each stored file is read once.

    An ensemble built before ensembles stored their OOF output yields an empty frame (it drops out).
    """
    out = []
    for frame in frames:
        masks: dict[str, np.ndarray] = {}
        for run_id, artifact in frame.parts:
            try:
                p = ensemble_oof(run_id, cache) if artifact == C.ENSEMBLE_OOF else snapshot_predictions(run_id, artifact, cache)
            except SaltError:
                continue
            keep = np.flatnonzero(np.isin(p.ids, list(wanted)))
            masks.update({p.ids[i]: p.pred[i] for i in keep})
        out.append(masks)
    return out


@dataclass(frozen=True)
class Step:
    frame: Frame
    masks: dict[str, np.ndarray]
    score: float  # mean tile score over the compared tiles


def improving_steps(frames: Sequence[Frame], masks: Sequence[Mapping[str, np.ndarray]],
                    truth: Mapping[str, np.ndarray], tile_ids: Sequence[str]) -> list[Step]:
    """The frames that improved the mean score over ``tile_ids`` (see the module docstring)."""
    labelled = [t for t in tile_ids if t in truth]
    coverage = [sum(t in m for t in labelled) for m in masks]
    most = max(coverage, default=0)
    if most == 0:
        return []
    steps: list[Step] = []
    for frame, m, cov in zip(frames, masks, coverage, strict=True):
        if cov < most:
            continue
        ids = [t for t in labelled if t in m]
        score = float(image_scores(np.stack([m[t] for t in ids]), np.stack([truth[t] for t in ids])).mean())
        if not steps or score > steps[-1].score:
            steps.append(Step(frame, dict(m), score))
    return steps


def write_gif(frames: Sequence[np.ndarray], path: Path, ms_per_frame: int = 1400, last_ms: int = 3500) -> Path:
    """An animated GIF (looping) of RGB frames of one size, written atomically."""
    from PIL import Image

    if not frames:
        raise SaltError(f"{path}: no frames to animate")
    images = [Image.fromarray(f).convert("P", palette=Image.Palette.ADAPTIVE, colors=255) for f in frames]
    durations = [ms_per_frame] * (len(images) - 1) + [last_ms]
    with atomic_path(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=durations, loop=0)
    return path
