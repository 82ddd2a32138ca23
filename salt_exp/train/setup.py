"""Builds the pieces of one fold run from a config: data split, loaders, model, loss, optimizer."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from salt_exp.config import ExperimentConfig
from salt_exp.contract import FULL_FIT, DatasetRecord, fold_label
from salt_exp.data.dataset import TileDataset, make_loader, num_channels
from salt_exp.data.folds import folds_path, load_or_create_folds
from salt_exp.data.kaggle import KaggleData, load_kaggle
from salt_exp.data.padding import TileAdapter
from salt_exp.data.transforms import build_train_transform
from salt_exp.errors import SaltError
from salt_exp.losses import DeepSupervisionLoss
from salt_exp.models import build_model


@dataclass(frozen=True, kw_only=True)
class FoldData:
    """The train/validation split of one fold, arrays in memory."""

    data: KaggleData
    folds: pd.DataFrame
    folds_file: str
    train_idx: np.ndarray
    val_idx: np.ndarray

    @property
    def val_ids(self) -> np.ndarray:
        return self.data.train.ids[self.val_idx]

    @property
    def val_masks(self) -> np.ndarray:
        return self.data.train.masks[self.val_idx]


def load_fold(cfg: ExperimentConfig, fold: int) -> FoldData:
    """The split of ``fold``; ``contract.FULL_FIT``: every tile trains, none is held out."""
    if fold != FULL_FIT and not 0 <= fold < cfg.data.n_folds:
        raise SaltError(f"--fold {fold} is out of range: data.n_folds is {cfg.data.n_folds} (valid 0..{cfg.data.n_folds - 1})")
    data = load_kaggle(cfg.data.root)
    d = cfg.data
    folds = load_or_create_folds(data, d.folds_scheme, d.n_folds, d.folds_seed)
    f = folds["fold"].to_numpy()
    path = folds_path(data, d.folds_scheme, d.n_folds, d.folds_seed)
    return FoldData(data=data, folds=folds, folds_file=str(path), train_idx=np.flatnonzero(f != fold),
                    val_idx=np.flatnonzero(f == fold))  # FULL_FIT (-1) matches no tile's fold


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
    return out


def _subset(fd: FoldData, idx: np.ndarray, channels: str, transform=None) -> TileDataset:
    t = fd.data.train
    return TileDataset(t.images[idx], t.masks[idx], t.depths[idx], channels, transform=transform)


def epoch_batches(cfg: ExperimentConfig, n_tiles: int, *, capped: bool = True) -> int:
    """Training batches of one epoch over ``n_tiles`` tiles, as :func:`train_loader` makes them: the last partial
    batch dropped when there is more than one batch's worth, then ``train.max_train_batches`` (unless not
    ``capped``). For planning without building a loader (full-data fits, study cost estimates)."""
    bs = cfg.optim.batch_size
    full = n_tiles // bs if n_tiles > bs else int(n_tiles > 0)
    cap = cfg.train.max_train_batches
    return min(full, cap) if capped and cap is not None else full


def train_loader(cfg: ExperimentConfig, fd: FoldData, epoch: int, *, batches: int | None = None):
    """The loader of one epoch: order and augmentations are a function of (seed, epoch) alone, so resume replays.
    ``batches``: at most this many batches (a budgeted run's planned epoch), as does ``train.max_train_batches``."""
    seed = cfg.seed * 100_003 + epoch
    ds = _subset(fd, fd.train_idx, cfg.data.channels, build_train_transform(cfg.augment, seed))
    drop_last = len(ds) > cfg.optim.batch_size
    loader = make_loader(ds, cfg.optim.batch_size, True, cfg.train.workers, seed=seed, drop_last=drop_last,
                         pin_memory=torch.cuda.is_available())
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
    ds = _subset(fd, fd.val_idx, cfg.data.channels)
    return make_loader(ds, cfg.train.val_batch_size, False, cfg.train.workers, seed=cfg.seed)


def build_parts(cfg: ExperimentConfig) -> tuple[torch.nn.Module, TileAdapter, DeepSupervisionLoss]:
    m = cfg.model
    torch.manual_seed(cfg.seed)  # same initial weights for the same config
    model = build_model(m.encoder, weights=m.weights, in_channels=num_channels(cfg.data.channels),
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
