"""Builds the pieces of one fold run from a config: data split, loaders, model, loss, optimizer."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from salt_exp.config import ExperimentConfig
from salt_exp.contract import FULL_FIT, DatasetRecord, Tag, fold_label, read_pseudo_labels
from salt_exp.data.dataset import MixedSampler, TileDataset, input_channels, make_loader, num_channels
from salt_exp.data.folds import folds_path, load_or_create_folds
from salt_exp.data.kaggle import KaggleData, load_kaggle
from salt_exp.data.padding import TileAdapter
from salt_exp.data.transforms import build_train_transform
from salt_exp.errors import SaltError
from salt_exp.losses import IGNORE, DeepSupervisionLoss
from salt_exp.models import build_model


@dataclass(frozen=True, kw_only=True)
class PseudoTiles:
    """The pseudo-labelled test tiles one fold trains on beside its training tiles (``pseudo.labels``)."""

    ids: np.ndarray  # (n,) str, test tiles only
    images: np.ndarray  # (n, 101, 101) uint8
    masks: np.ndarray  # (n, 101, 101) uint8 0/1, + losses.IGNORE on the pixels the labels leave out of the loss
    depths: np.ndarray  # (n,) float32
    digest: str  # sha1 of the labels file: runs trained on other labels differ here
    source: dict[str, str]  # where the labels came from (contract.PseudoLabels.source)


@dataclass(frozen=True, kw_only=True)
class Canvases:
    """Context canvases (N, S, S) uint8 and their validity planes, and how many of the N tiles have a neighbour;
    ``plain``: the tiles padded alone (N, S, S), for training samples given without neighbours (context.dropout)."""

    images: np.ndarray
    validity: np.ndarray
    linked: int
    plain: np.ndarray | None = None


@dataclass(frozen=True, kw_only=True)
class FoldContext:
    """The context canvases of one fold (``context.mode`` not none): its training tiles' (validation tiles
    excluded as neighbours), its validation tiles' (training tiles excluded) and its pseudo tiles' (validation
    tiles excluded), so that nothing crosses the fold split (salt_exp.data.context)."""

    train: Canvases
    val: Canvases
    pseudo: Canvases | None
    validity_plane: bool


@dataclass(frozen=True, kw_only=True)
class FoldData:
    """The train/validation split of one fold, arrays in memory; ``pseudo``: its pseudo-labelled tiles, if any;
    ``context``: its context canvases, under ``context.mode`` image."""

    data: KaggleData
    folds: pd.DataFrame
    folds_file: str
    train_idx: np.ndarray
    val_idx: np.ndarray
    pseudo: PseudoTiles | None = None
    context: FoldContext | None = None

    @property
    def val_ids(self) -> np.ndarray:
        return self.data.train.ids[self.val_idx]

    @property
    def val_masks(self) -> np.ndarray:
        return self.data.train.masks[self.val_idx]


def load_fold(cfg: ExperimentConfig, fold: int, *, pseudo_file: Path | None = None) -> FoldData:
    """The split of ``fold``; ``contract.FULL_FIT``: every tile trains, none is held out. ``pseudo_file``: the
    local copy of ``pseudo.labels`` (the tracked fold run fetches it; without it no pseudo tiles are loaded)."""
    if fold != FULL_FIT and not 0 <= fold < cfg.data.n_folds:
        raise SaltError(f"--fold {fold} is out of range: data.n_folds is {cfg.data.n_folds} (valid 0..{cfg.data.n_folds - 1})")
    data = load_kaggle(cfg.data.root)
    d = cfg.data
    folds = load_or_create_folds(data, d.folds_scheme, d.n_folds, d.folds_seed)
    f = folds["fold"].to_numpy()
    path = folds_path(data, d.folds_scheme, d.n_folds, d.folds_seed)
    pseudo = load_pseudo(pseudo_file, data, fold, cfg) if cfg.pseudo.labels and pseudo_file is not None else None
    train_idx, val_idx = np.flatnonzero(f != fold), np.flatnonzero(f == fold)  # FULL_FIT (-1) matches no tile's fold
    context = fold_context(cfg, data, train_idx, val_idx, pseudo) if cfg.context.mode != "none" else None
    return FoldData(data=data, folds=folds, folds_file=str(path), train_idx=train_idx, val_idx=val_idx,
                    pseudo=pseudo, context=context)


def fold_context(cfg: ExperimentConfig, data: KaggleData, train_idx: np.ndarray, val_idx: np.ndarray,
                 pseudo: PseudoTiles | None) -> FoldContext:
    """The fold's context canvases: every train and test tile of ``data`` may be a neighbour, except across the
    fold split."""
    from salt_exp.data.context import ContextPool, padded_alone

    pool, t = ContextPool.from_data(data), data.train
    train_ids, val_ids = t.ids[train_idx].tolist(), t.ids[val_idx].tolist()
    size, pad_mode = cfg.padding.size, cfg.padding.mode

    def make(ids: list[str], images: np.ndarray, exclude: list[str], trained: bool = False) -> Canvases:
        alone = padded_alone(images, size, pad_mode) if trained and cfg.context.dropout > 0 else None
        canvas, valid = pool.canvases(ids, images, size=size, pad_mode=pad_mode, exclude=exclude, alone=alone)
        return Canvases(images=canvas, validity=valid, linked=pool.linked(ids, exclude),
                        plain=None if alone is None else alone[0])

    return FoldContext(train=make(train_ids, t.images[train_idx], val_ids, trained=True),
                       val=make(val_ids, t.images[val_idx], train_ids),
                       pseudo=None if pseudo is None else make(pseudo.ids.tolist(), pseudo.images, val_ids, trained=True),
                       validity_plane=cfg.context.validity)


def context_params(fd: FoldData) -> dict[str, int]:
    """Params of a context run: how many training / validation tiles have a neighbour in their canvas."""
    c = fd.context
    return {} if c is None else {"context_linked_train": c.train.linked, "context_linked_val": c.val.linked}


def load_pseudo(path: Path, data: KaggleData, fold: int, cfg: ExperimentConfig) -> PseudoTiles:
    """Fold ``fold``'s pseudo-labelled tiles from a labels file; SaltError when one is a train tile (its label
    would replace the truth, and a validation tile's would leak it) or not a test tile of ``data``."""
    labels, where = read_pseudo_labels(path), f"pseudo.labels {cfg.pseudo.labels}"
    mine = labels.folds.get(fold)
    if mine is None:
        held = ", ".join(fold_label(k) for k in labels.folds) or "none"
        raise SaltError(f"{where}: no labels for fold {fold_label(fold)} (it holds folds {held})")
    is_train = np.isin(mine.ids, data.train.ids)
    if is_train.any():
        raise SaltError(f"{where}: fold {fold_label(fold)} labels train tile {mine.ids[is_train][0]} "
                        f"({int(is_train.sum())} train ids); pseudo-labels must be unlabelled test tiles")
    test = data.test
    if test is None:
        raise SaltError(f"{where}: {data.root} has no test/images to take the pseudo-labelled tiles from")
    pos = test.position(mine.ids.tolist())  # SaltError naming a tile that is not a test tile of this data
    if cfg.data.channels == "depth" and np.isnan(test.depths[pos]).any():
        raise SaltError(f"{where}: data.channels is depth but depths.csv lacks some pseudo-labelled tiles' depth")
    masks = mine.masks.astype(np.uint8)
    if mine.ignore is not None:
        masks = masks | (mine.ignore.astype(np.uint8) * np.uint8(IGNORE))
    return PseudoTiles(ids=mine.ids, images=test.images[pos], masks=masks,
                       depths=test.depths[pos], digest=hashlib.sha1(Path(path).read_bytes()).hexdigest(),
                       source=labels.source)


def pseudo_params(fd: FoldData) -> dict[str, str | int]:
    """Params of a run trained on pseudo-labels: the labels file's digest and how many tiles it gave this fold."""
    p = fd.pseudo
    return {} if p is None else {"pseudo_labels_digest": p.digest, "pseudo_tiles": len(p.ids)}


def pseudo_tags(fd: FoldData) -> dict[str, str]:
    """Lineage tags of a run trained on pseudo-labels: the ensemble version that made them, their run, the round."""
    src = {} if fd.pseudo is None else fd.pseudo.source
    keys = {Tag.PSEUDO_ENSEMBLE: "ensemble", Tag.PSEUDO_RUN: "pseudo_run", Tag.PSEUDO_ROUND: "round"}
    return {tag: str(src[key]) for tag, key in keys.items() if key in src}


def fold_datasets(fd: FoldData, fold: int) -> list[DatasetRecord]:
    """The run's dataset inputs: its training tiles and (unless a full fit) its validation tiles, each with a
    digest of its tile ids and the folds file, so runs on other data or other folds are told apart."""
    root = Path(fd.data.root).resolve()
    folds_sha = hashlib.sha1(Path(fd.folds_file).read_bytes()).hexdigest()
    out = []
    for context, idx in (("train", fd.train_idx), ("validation", fd.val_idx)):
        if not len(idx):
            continue
        ids = sorted(fd.data.train.ids[idx].tolist())
        digest = hashlib.sha1(("\n".join(ids) + folds_sha).encode()).hexdigest()[:12]
        out.append(DatasetRecord(name=f"{root.name}-fold{fold_label(fold)}-{context}", digest=digest, source=str(root),
                                 context=context, profile={"tiles": len(ids), "fold": fold_label(fold),
                                                           "folds_file": Path(fd.folds_file).name}))
    if fd.pseudo is not None:  # trained on too: the labels file's digest tells label sets apart
        out.append(DatasetRecord(name=f"{root.name}-fold{fold_label(fold)}-pseudo", digest=fd.pseudo.digest[:12],
                                 source=str(root), context="train",
                                 profile={"tiles": len(fd.pseudo.ids), "fold": fold_label(fold),
                                          "ensemble": fd.pseudo.source.get("ensemble", "?")}))
    return out


def _subset(fd: FoldData, idx: np.ndarray, channels: str, transform=None, canvases: Canvases | None = None) -> TileDataset:
    t = fd.data.train
    if canvases is not None:
        return TileDataset(canvases.images, t.masks[idx], t.depths[idx], channels, transform=transform,
                           validity=canvases.validity, validity_plane=fd.context.validity_plane, plain=canvases.plain)
    return TileDataset(t.images[idx], t.masks[idx], t.depths[idx], channels, transform=transform)


def _with_pseudo(fd: FoldData, p: PseudoTiles, channels: str, transform) -> TileDataset:
    """The fold's training tiles followed by its pseudo-labelled tiles (item index >= len(train_idx): pseudo), one
    dataset so that both get the same augmentation stream."""
    t, c = fd.data.train, fd.context
    masks = np.concatenate([t.masks[fd.train_idx], p.masks])
    depths = np.concatenate([t.depths[fd.train_idx], p.depths]).astype(np.float32)
    if c is not None:
        plain = None if c.train.plain is None else np.concatenate([c.train.plain, c.pseudo.plain])
        return TileDataset(np.concatenate([c.train.images, c.pseudo.images]), masks, depths, channels,
                           transform=transform, validity=np.concatenate([c.train.validity, c.pseudo.validity]),
                           validity_plane=c.validity_plane, plain=plain)
    return TileDataset(np.concatenate([t.images[fd.train_idx], p.images]), masks, depths, channels,
                       transform=transform)


def epoch_batches(cfg: ExperimentConfig, n_tiles: int, *, capped: bool = True) -> int:
    """Training batches of one epoch over ``n_tiles`` tiles, as :func:`train_loader` makes them: the last partial
    batch dropped when there is more than one batch's worth, then ``train.max_train_batches`` (unless not
    ``capped``). For planning without building a loader (full-data fits, study cost estimates)."""
    bs = cfg.optim.batch_size
    full = n_tiles // bs if n_tiles > bs else int(n_tiles > 0)
    cap = cfg.train.max_train_batches
    return min(full, cap) if capped and cap is not None else full


def train_loader(cfg: ExperimentConfig, fd: FoldData, epoch: int, *, batches: int | None = None,
                 pseudo: bool = True):
    """The loader of one epoch: order and augmentations are a function of (seed, epoch) alone, so resume replays.
    ``batches``: at most this many batches (a budgeted run's planned epoch), as does ``train.max_train_batches``.
    With pseudo-labelled tiles (``fd.pseudo``) and ``pseudo`` (False: an epoch past ``pseudo.cycles``) each sample
    is one of them with probability ``pseudo.share``, else a training tile (:class:`MixedSampler`); the epoch has
    as many batches as without them."""
    seed = cfg.seed * 100_003 + epoch
    c = fd.context
    transform = build_train_transform(cfg.augment, seed, canvas=None if c is None else cfg.padding.size,
                                      context_dropout=cfg.context.dropout)
    p = fd.pseudo
    if pseudo and p is not None and len(p.ids) and cfg.pseudo.share > 0:
        ds = _with_pseudo(fd, p, cfg.data.channels, transform)
        sampler = MixedSampler(len(fd.train_idx), len(p.ids), cfg.pseudo.share, seed=seed)
    else:
        ds, sampler = _subset(fd, fd.train_idx, cfg.data.channels, transform, None if c is None else c.train), None
    drop_last = len(fd.train_idx) > cfg.optim.batch_size
    loader = make_loader(ds, cfg.optim.batch_size, True, cfg.train.workers, seed=seed, drop_last=drop_last,
                         pin_memory=torch.cuda.is_available(), sampler=sampler)
    caps = [n for n in (cfg.train.max_train_batches, batches) if n is not None]
    if not caps or min(caps) >= len(loader):
        return loader
    return _Capped(loader, min(caps))


class _Capped:
    """At most ``n`` batches of a loader per pass (smoke runs and tests)."""

    def __init__(self, loader: torch.utils.data.DataLoader, n: int) -> None:
        self.loader, self.n = loader, n

    def __len__(self) -> int:
        return min(self.n, len(self.loader))

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i >= self.n:
                break
            yield batch


def val_loader(cfg: ExperimentConfig, fd: FoldData) -> torch.utils.data.DataLoader:
    ds = _subset(fd, fd.val_idx, cfg.data.channels, canvases=None if fd.context is None else fd.context.val)
    return make_loader(ds, cfg.train.val_batch_size, False, cfg.train.workers, seed=cfg.seed)


def build_parts(cfg: ExperimentConfig) -> tuple[torch.nn.Module, TileAdapter, DeepSupervisionLoss]:
    m = cfg.model
    torch.manual_seed(cfg.seed)  # same initial weights for the same config
    planes = input_channels(cfg)
    # a validity plane under validity_init zero: zero weights at the start, every other weight drawn as plain
    extra = planes - num_channels(cfg.data.channels) if cfg.context.validity_init == "zero" else 0
    model = build_model(m.encoder, weights=m.weights, in_channels=planes - extra, extra_channels=extra,
                        decoder_channels=tuple(m.decoder_channels), scse=m.scse, hypercolumn=m.hypercolumn,
                        deep_supervision=m.deep_supervision, dropout=m.dropout)
    return model, TileAdapter(cfg.padding.mode, cfg.padding.size), build_loss(cfg)


def build_loss(cfg: ExperimentConfig, *, late: bool = False) -> DeepSupervisionLoss:
    """The run's loss; ``late``: the one from cycle ``loss.late_from_cycle`` on (the same where no late terms)."""
    lc = cfg.loss
    terms = lc.late_terms if late and lc.late_terms else lc.seg_terms
    return DeepSupervisionLoss(terms, cls_weight=lc.cls_weight, seg_weight=lc.seg_weight, fused_weight=lc.fused_weight)


def build_optimizer(cfg: ExperimentConfig, model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    o = cfg.optim
    params = model.parameters()
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=o.nesterov)
    if o.name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=o.weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=o.weight_decay)
