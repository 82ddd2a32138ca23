"""What a study costs before it starts: trials x folds x epochs x images, and hours on this machine.

The figure is the base config's (a search space that changes the encoder or the input size changes it):
the images a fold run trains (every epoch a pass over its training tiles, or ``train.max_train_batches``
batches) times the trials left to run and the study's folds, over the training throughput of that encoder,
input size and batch size. The throughput is the newest finished fold run's ``train_images_per_s`` in the
store with the same encoder, input size and batch size, else a few real training batches timed now (fp32,
so a bf16 machine trains faster than estimated). Budgeted configs (``schedule.budget_minutes``) cost their
budget. ``salt-exp study`` prints it and stops before a study of more than ``CONFIRM_HOURS`` unless ``--yes``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from salt_exp import contract as C
from salt_exp.config import ExperimentConfig
from salt_exp.study.spec import StudySpec

CONFIRM_HOURS = 24.0
VALIDATION_SHARE = 1 / 3  # a validated image costs about a third of a trained one (no backward pass)


@dataclass(frozen=True, kw_only=True)
class StudyCost:
    study: str
    trials: int  # left to run
    folds: int
    epochs: int  # per fold run
    train_images: int  # per epoch
    val_images: int  # per epoch
    budget_minutes: float | None
    images_per_s: float | None
    source: str  # where the throughput comes from
    timeout_s: float | None = None

    @property
    def images(self) -> int:
        return self.trials * self.folds * self.epochs * self.train_images

    @property
    def hours(self) -> float:
        if self.trials == 0:
            return 0.0
        if self.budget_minutes is not None:
            hours = self.trials * self.folds * self.budget_minutes / 60.0
        elif not self.images_per_s:
            return math.nan  # not measured
        else:
            per_epoch = (self.train_images + VALIDATION_SHARE * self.val_images) / self.images_per_s
            hours = self.trials * self.folds * self.epochs * per_epoch / 3600.0
        return hours if self.timeout_s is None else min(hours, self.timeout_s / 3600.0)

    def line(self) -> str:
        runs = f"{self.trials} trial(s) left x {self.folds} fold(s)"
        if self.trials == 0:
            return f"study {self.study}: no trials left to run (its ensemble and figures, if any, follow)"
        if self.budget_minutes is not None:
            what = f"{runs} x {self.budget_minutes:g} min budget"
        else:
            what = (f"{runs} x {self.epochs} epochs x {self.train_images} images = {self.images / 1e6:.2f}M training "
                    f"images; at {self.images_per_s:.1f} img/s ({self.source})")
        capped = " (capped by the study's timeout)" if self.timeout_s is not None and self.hours == self.timeout_s / 3600 else ""
        return f"study {self.study}: {what} ~ {_duration(self.hours)} on this machine{capped}"


def _duration(hours: float) -> str:
    if math.isnan(hours):
        return "unknown"
    if hours < 1:
        return f"{hours * 60:.0f} min"
    return f"{hours:.1f} h" + (f" ({hours / 24:.1f} days)" if hours >= 48 else "")


def stored_throughput(cfg: ExperimentConfig) -> tuple[float, str] | None:
    """(train images/s, which run) of the newest finished fold run of the same encoder, input size and batch."""
    from salt_exp.tracking import find_runs_in_studies

    runs = find_runs_in_studies(f"tags.`{C.Tag.ROLE}` = 'fold' and tags.`{C.Tag.ENCODER}` = '{cfg.model.encoder}' "
                                "and attributes.status = 'FINISHED'", max_results=50)
    want = {"padding.size": str(cfg.padding.size), "padding.mode": cfg.padding.mode,
            "optim.batch_size": str(cfg.optim.batch_size)}
    for run in runs:
        ips = run.metrics.get("train_images_per_s")
        if ips and all(run.params.get(k) == v for k, v in want.items()):
            return float(ips), f"fold run {run.run_id[:8]}"
    return None


def measured_throughput(cfg: ExperimentConfig, fd) -> float:
    """Train images/s of ``cfg`` timed now on a few real loader batches of ``fd`` (a ``FoldData``; fp32)."""
    from salt_exp.train.budget import probe_seconds
    from salt_exp.train.engine import Runtime
    from salt_exp.train.setup import build_optimizer, build_parts, train_loader

    model, adapter, loss_fn = build_parts(cfg)
    rt = Runtime.resolve(cfg.train.device, cfg.train.amp, channels_last=False)
    model.to(rt.device)
    lr = cfg.optim.lr if cfg.optim.lr != "auto" else cfg.lr_find.start_lr
    optimizer = build_optimizer(cfg, model, lr)
    step_s, _ = probe_seconds(model, adapter, loss_fn, optimizer, batches=train_loader(cfg, fd, 0), rt=rt,
                              scaler=rt.grad_scaler(), grad_clip=cfg.optim.grad_clip)
    return cfg.optim.batch_size / max(step_s, 1e-9)


def study_cost(spec: StudySpec, trials_left: int) -> StudyCost:
    from salt_exp.train.setup import epoch_batches, load_fold

    cfg = spec.base_config()
    fd = load_fold(cfg, spec.folds[0])
    bs, batches = cfg.optim.batch_size, epoch_batches(cfg, len(fd.train_idx))
    budget = cfg.schedule.budget_minutes
    ips, source = None, "budgeted"
    if budget is None and trials_left > 0:
        found = stored_throughput(cfg)
        ips, source = found if found else (measured_throughput(cfg, fd), "timed now, fp32")
    return StudyCost(study=spec.name, trials=trials_left, folds=len(spec.folds),
                     epochs=cfg.schedule.cycles * cfg.schedule.cycle_epochs, train_images=batches * bs,
                     val_images=len(fd.val_idx), budget_minutes=budget, images_per_s=ips, source=source,
                     timeout_s=spec.timeout)
