"""SWA snapshots: the weights of one fold run's cycle snapshots averaged, registered as one more snapshot.

Stochastic weight averaging (Izmailov et al. 2018, "Averaging Weights Leads to Wider Optima and Better
Generalization"; PyTorch's ``torch.optim.swa_utils``): the mean of weights taken along one training trajectory
(here the best epoch of each cosine cycle, which the run registered) often sits in a flatter region than any
of them. The BatchNorm running statistics of averaged weights belong to none of the members, so they are
recomputed, as ``swa_utils.update_bn`` does, by forward passes in train mode over the fold's training tiles
(no augmentation, seeded order, a cumulative average: momentum None).

The SWA snapshot is scored as the cycles were during training (the fold's validation tiles, no TTA, val_map at
0.5 and the searched threshold), so its ``val_map`` competes with theirs in the ensemble's selection and its
stored OOF averages with theirs; the test prediction gives every member h-flip TTA alike. It is logged into
the fold run itself (``contract.SWA_CYCLE``, ``snapshots/swa/``, logged model ``fold<k>-swa``), once: a
second call finds the version (key: its ``cycle`` tag) and the logged model (key ``swa``) again.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from salt_exp import contract as C
from salt_exp.config import ExperimentConfig, to_dict
from salt_exp.contract import SnapshotVersion
from salt_exp.data.dataset import TileDataset, make_loader
from salt_exp.data.padding import TileAdapter
from salt_exp.ensemble.predict import load_member
from salt_exp.errors import SaltError
from salt_exp.tracking import RunTracker, fetch_artifact, run_summary, temp_dir
from salt_exp.train.engine import choose_runtime, forward_cropped, predict
from salt_exp.train.fold_run import evaluate
from salt_exp.train.precision import resolve_device
from salt_exp.train.setup import FoldData, fold_datasets, load_fold, val_loader

MIN_MEMBERS = 2  # an average of one snapshot is that snapshot


# ---------------------------------------------------------------- weights (pure torch)


def average_state_dicts(states: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of ``states`` for floating tensors (summed in float64, kept in their own dtype);
    other tensors (BatchNorm's ``num_batches_tracked``) are the last state's. Keys and shapes must agree."""
    if not states:
        raise SaltError("SWA: no state_dict to average")
    last = states[-1]
    for i, s in enumerate(states):
        if set(s) != set(last) or any(s[k].shape != last[k].shape for k in last):
            raise SaltError(f"SWA: snapshot {i}'s state_dict differs from the last one's in keys or shapes")
    return {k: torch.stack([s[k].double() for s in states]).mean(0).to(v.dtype) if v.is_floating_point()
            else v.clone() for k, v in last.items()}


@torch.no_grad()
def recalibrate_bn(model: torch.nn.Module, adapter: TileAdapter, batches: Iterable[dict], device: torch.device) -> int:
    """Every BatchNorm layer's running mean and variance recomputed as the plain average over ``batches``
    (``{"image": (B, C, 101, 101)}``), forward passes in train mode; momenta and mode restored afterwards.
    Returns the batches run (0 when the model has no BatchNorm layer: nothing to do)."""
    layers = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    if not layers:
        return 0
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: every batch weighs the same
    training, seen = model.training, 0
    model.train()
    for batch in batches:
        forward_cropped(model, adapter, batch["image"].to(device))
        seen += 1
    for m, momentum in zip(layers, momenta, strict=True):
        m.momentum = momentum
    model.train(training)
    return seen


def bn_batches(cfg: ExperimentConfig, fd: FoldData, limit: int | None = None) -> Iterator[dict]:
    """The fold's training tiles without augmentation, in training-size batches of a seeded order (the last
    partial batch dropped when there is more than one batch's worth); at most ``limit`` batches."""
    t, c = fd.data.train, fd.context
    if c is not None:  # a context model recalibrates on its training canvases
        ds = TileDataset(c.train.images, None, t.depths[fd.train_idx], cfg.data.channels, validity=c.train.validity,
                         validity_plane=c.validity_plane)
    else:
        ds = TileDataset(t.images[fd.train_idx], None, t.depths[fd.train_idx], cfg.data.channels)
    bs = cfg.optim.batch_size
    loader = make_loader(ds, bs, True, cfg.train.workers, seed=cfg.seed, drop_last=len(ds) > bs)
    return itertools.islice(loader, limit)


def score_fold(model: torch.nn.Module, adapter: TileAdapter, cfg: ExperimentConfig, fd: FoldData,
               device: str) -> tuple[np.ndarray, dict[str, float], list[dict]]:
    """(probabilities (N, 101, 101), metrics, coverage bins) on the fold's validation tiles as training scored
    its cycles (no TTA), with the snapshot's own precision rule. The probabilities are rounded to float16 first,
    as ``oof.npz`` stores them, so the version's val_map is exactly what its stored OOF gives."""
    loader = val_loader(cfg, fd)
    t = cfg.train
    batch = next(iter(loader)) if "auto" in (t.precision, t.channels_last, t.threads) else None
    rt, _ = choose_runtime(model, adapter, device=device, precision=t.precision, channels_last=t.channels_last,
                           amp=t.amp, batch=batch, requested_threads=t.threads)
    probs, _ = predict(model, adapter, loader, rt)
    probs = probs.astype(np.float16).astype(np.float32)
    metrics, bins = evaluate(probs, fd.val_masks)
    return probs, {k: float(v) for k, v in metrics.items()}, bins  # plain floats: the checkpoint loads weights_only


# ---------------------------------------------------------------- one fold run


@dataclass(frozen=True, kw_only=True)
class SWASnapshot:
    """An SWA snapshot computed, before it is logged."""

    members: tuple[SnapshotVersion, ...]  # the cycle snapshots averaged, in cycle order
    checkpoint: dict[str, Any]  # what the weights file holds: state_dict, config, fold, cycle, epoch, metrics
    val_ids: np.ndarray
    probs: np.ndarray  # (N, 101, 101) float32 validation probabilities
    metrics: dict[str, float]  # val_map, val_map_best_thr, val_best_thr
    bins: list[dict]
    bn_batches: int
    dataset: tuple[str, str] | None = None  # (name, digest) of the validation tiles, as the run logged them

    @property
    def cycles(self) -> tuple[int, ...]:
        return tuple(m.cycle for m in self.members)


def choose_members(versions: Sequence[SnapshotVersion], top: int | None = None) -> tuple[SnapshotVersion, ...]:
    """The cycle snapshots of one run to average, in cycle order: all, or the ``top`` best by val_map (ties keep
    the earlier cycle). SaltError (the run is skipped) when fewer than two are registered."""
    cycles = sorted((v for v in versions if not v.swa and not v.full_fit), key=lambda v: v.cycle)
    if len(cycles) < MIN_MEMBERS:
        raise SaltError(f"{len(cycles)} cycle snapshot(s) registered; SWA needs at least {MIN_MEMBERS}")
    if top is not None:
        best = sorted(cycles, key=lambda v: (-v.val_map, v.cycle))[:top]
        cycles = sorted(best, key=lambda v: v.cycle)
    return tuple(cycles)


def _check_val_ids(fd: FoldData, member: SnapshotVersion, cache: Path) -> None:
    ids, _ = C.read_snapshot_oof(fetch_artifact(member.run_id, member.oof, cache))
    if ids.astype(str).tolist() != fd.val_ids.astype(str).tolist():
        raise SaltError(f"{member.key}: its stored validation ids differ from fold {member.fold}'s persisted folds "
                        "(folds file or dataset changed since the run)")


def build_swa(members: Sequence[SnapshotVersion], *, data_root: str | None, bn_limit: int | None, device: str,
              cache: Path) -> SWASnapshot:
    """Average ``members`` (one run's cycle snapshots), recalibrate BatchNorm on the fold's training tiles (seeded,
    at most ``bn_limit`` batches), and score the result on its validation tiles."""
    loaded = [load_member(m, cache) for m in members]
    model, adapter, cfg = loaded[-1]
    model.load_state_dict(average_state_dicts([m.state_dict() for m, _, _ in loaded]))
    del loaded
    fold = members[-1].fold
    fd = load_fold(replace(cfg, data=replace(cfg.data, root=data_root or cfg.data.root)), fold)
    _check_val_ids(fd, members[-1], cache)
    dev = resolve_device(device)
    model.to(dev)
    torch.manual_seed(cfg.seed)  # dropout, where the config has some, in the BatchNorm pass
    seen = recalibrate_bn(model, adapter, bn_batches(cfg, fd, bn_limit), dev)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}  # before scoring moves the layout
    probs, metrics, bins = score_fold(model, adapter, cfg, fd, device)
    checkpoint = {"state_dict": state, "config": to_dict(cfg), "fold": fold, "cycle": C.SWA_CYCLE,
                  "epoch": max(m.epoch for m in members), "swa_cycles": [m.cycle for m in members],
                  "swa_members": [m.key for m in members], "bn_batches": seen, **metrics}
    dataset = [(r.name, r.digest) for r in fold_datasets(fd, fold) if r.context == "validation"]
    return SWASnapshot(members=tuple(members), checkpoint=checkpoint, val_ids=fd.val_ids, probs=probs,
                       metrics=metrics, bins=bins, bn_batches=seen, dataset=dataset[0] if dataset else None)


# ---------------------------------------------------------------- into the fold run


def log_swa(swa: SWASnapshot) -> SnapshotVersion:
    """Log ``swa`` into its fold run (status untouched) as the cycles are logged (``train.mlflow_hook``): OOF and
    coverage-bin table under ``snapshots/swa/``, weights as the logged model ``fold<k>-swa`` with its metrics
    (measured on the validation dataset), then the registry version; returns the version."""
    from salt_exp.tracking.models import log_model_metrics

    last = swa.members[-1]
    tracker, folder = RunTracker.attach(last.run_id), C.snapshot_dir(C.SWA_CYCLE)
    _log_files(tracker, swa, folder)
    thr = float(swa.metrics["val_best_thr"])
    version = replace(last, version="", cycle=C.SWA_CYCLE, epoch=int(swa.checkpoint["epoch"]),
                      val_map=float(swa.metrics["val_map"]), val_best_thr=thr, oof=C.snapshot_oof(C.SWA_CYCLE),
                      weights=C.model_weights_path(C.SWA_WEIGHTS_FILE), created_ms=0)
    model_id = _log_model(swa, version)
    held = run_summary(last.run_id).metrics
    metrics = {C.SWAMetric.VAL_MAP: swa.metrics["val_map"], C.SWAMetric.VAL_BEST_THR: thr,
               C.SWAMetric.VAL_MAP_BEST_THR: swa.metrics["val_map_best_thr"], C.SWAMetric.CYCLES: len(swa.members)}
    fresh = {k: v for k, v in metrics.items() if k not in held}  # a redo after a crash adds no second row
    if fresh:
        log_model_metrics(last.run_id, model_id, fresh, 0, swa.dataset)
    version = replace(version, model_id=model_id)
    tags = {**version.to_tags(), C.SWA_CYCLES_TAG: _cycles_text(swa.cycles)}
    number = tracker.register_version(version.model, folder, tags, key_tag="cycle", model_id=model_id)
    return replace(version, version=number)


def _log_files(tracker: RunTracker, swa: SWASnapshot, folder: str) -> None:
    """The coverage-bin table and figure, then ``oof.npz`` (each replacing an earlier attempt's: the version is
    registered from this attempt's numbers)."""
    from salt_exp.plots import coverage_bins_figure

    bins = swa.bins
    tracker.log_table({k: [b[k] for b in bins] for k in bins[0]}, f"{folder}/{C.COVERAGE_TABLE}")
    title = f"fold {C.fold_label(swa.members[-1].fold)} swa of cycles {_cycles_text(swa.cycles)}"
    with temp_dir() as tmp:
        coverage_bins_figure(bins, title).savefig(Path(tmp) / C.COVERAGE_PNG, dpi=100)
        tracker.log_artifact(Path(tmp) / C.COVERAGE_PNG, folder)
        tracker.log_artifact(C.write_snapshot_oof(Path(tmp) / C.SNAPSHOT_OOF_FILE, swa.val_ids, swa.probs), folder)


def _cycles_text(cycles: Sequence[int]) -> str:
    return ",".join(map(str, cycles))


def _log_model(swa: SWASnapshot, v: SnapshotVersion) -> str:
    """The SWA weights as a pyfunc logged model of the fold run, exactly as a cycle's (``mlflow_hook._log_model``);
    logged once per run (model key ``swa``), a model left PENDING by a killed process is redone."""
    from salt_exp.tracking.models import log_snapshot_model

    fold, cycles = C.fold_label(v.fold), _cycles_text(swa.cycles)
    with temp_dir() as tmp:
        weights = Path(tmp) / C.SWA_WEIGHTS_FILE
        torch.save(swa.checkpoint, weights)
        return log_snapshot_model(v.run_id, v, cycle=C.SWA_CYCLE, epoch=v.epoch, threshold=v.val_best_thr,
                                  weights=weights, step=0,
                                  label=f"{v.model} fold {fold} swa of cycles {cycles} (run {v.run_id})",
                                  meta_extra={"swa_cycles": list(swa.cycles)},
                                  params_extra={C.SWA_CYCLES_TAG: cycles, "bn_batches": swa.bn_batches})
