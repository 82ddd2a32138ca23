"""The experiment config's schema: frozen dataclasses, one per section, with types, bounds and defaults.

Defaults are the reference pipeline (the 11th-place TGS solution's recipe); ``configs/base.yaml`` spells
them out. :func:`check_consistency` holds the rules that involve more than one field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from salt_exp.config.engine import num as _num
from salt_exp.errors import SaltError

FoldsScheme = Literal["random", "coverage", "depth", "mosaic"]
Channels = Literal["raw", "depth", "coord"]
PaddingMode = Literal["replicate", "reflect", "reflect_replicate", "zero", "biharmonic", "resize"]
OptimName = Literal["sgd", "adam", "adamw"]
Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "bf16"]
ContextMode = Literal["none", "image"]
ValidityInit = Literal["zero", "random"]


def _prob(default: float) -> Any:
    """A probability field: a number in [0, 1]."""
    return _num(default, ge=0.0, le=1.0)


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    root: str = "data/synthetic"
    folds_scheme: FoldsScheme = "random"
    n_folds: int = _num(5, ge=2)
    folds_seed: int = 42
    channels: Channels = "raw"  # raw: 1 plane; depth/coord: tile, plane, tile*plane


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    encoder: str = "se_resnext50_32x4d"
    weights: str = "none"
    decoder_channels: tuple[int, ...] = _num((256, 128, 64, 32, 16), ge=1)
    scse: bool = True
    hypercolumn: bool = True
    deep_supervision: bool = True
    dropout: float = _num(0.0, ge=0.0, lt=1.0)


@dataclass(frozen=True)
class PaddingConfig:
    mode: PaddingMode = "replicate"
    size: int = _num(128, ge=32)  # >= 101 except for resize; a multiple of 32 (the encoders' deepest stride)


@dataclass(frozen=True, kw_only=True)
class AugmentConfig:
    """Probabilities (0 disables) and parameters of the training augmentations."""

    hflip: float = _prob(0.5)
    invert: float = _prob(0.5)
    gamma: float = _prob(0.3)
    gamma_limit: tuple[float, float] = _num((0.8, 1.25), gt=0.0)
    cutout: float = _prob(0.3)
    cutout_holes: int = _num(1, ge=1)
    cutout_size: int = _num(20, ge=1, le=101)
    crop: float = _prob(0.3)
    crop_size: int = _num(88, ge=1, le=101)
    brightness_contrast: float = _prob(0.0)
    brightness_limit: float = _num(0.2, ge=0.0, le=1.0)
    contrast_limit: float = _num(0.2, ge=0.0, le=1.0)
    shift_scale_rotate: float = _prob(0.0)
    shift_limit: float = _num(0.0625, ge=0.0, le=1.0)
    scale_limit: float = _num(0.1, ge=0.0, lt=1.0)
    rotate_limit: float = _num(10.0, ge=0.0, le=180.0)


@dataclass(frozen=True)
class LossConfig:
    """``seg_terms`` maps loss-term names (owned by ``salt_exp.losses``) to weights; treat as read-only.

    ``late_terms`` (None: none) replace ``seg_terms`` from cycle ``late_from_cycle`` (0-based) on: a loss
    schedule such as BCE while the model learns where salt is, then Lovasz to sharpen the IoU.
    """

    seg_terms: dict[str, float] = field(default_factory=lambda: {"bce": 1.0, "lovasz": 0.5}, metadata={"ge": 0.0})
    late_terms: dict[str, float] | None = field(default=None, metadata={"ge": 0.0})
    late_from_cycle: int = _num(1, ge=1)
    cls_weight: float = _num(0.05, ge=0.0)
    seg_weight: float = _num(0.1, ge=0.0)
    fused_weight: float = _num(1.0, ge=0.0)


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    name: OptimName = "sgd"
    lr: float | Literal["auto"] = _num("auto", gt=0.0)  # "auto": take the LR range test's suggestion
    momentum: float = _num(0.9, ge=0.0, lt=1.0)
    weight_decay: float = _num(1e-4, ge=0.0)
    nesterov: bool = False
    batch_size: int = _num(16, ge=1)
    grad_clip: float | None = _num(None, gt=0.0)


@dataclass(frozen=True, kw_only=True)
class ScheduleConfig:
    """Cosine cycles with warm restarts. ``min_lr`` is an absolute LR, not a ratio of the max LR."""

    cycles: int = _num(10, ge=1)
    cycle_epochs: int = _num(50, ge=1)
    min_lr: float = _num(1e-4, ge=0.0)
    warmup_epochs: int = _num(0, ge=0)
    # Minutes of wall time per fold run (LR finder included). When set, the cycles' length is fitted to the
    # budget: `cycles` cycles of as many whole epochs as the measured throughput allows (`cycle_epochs` is
    # then ignored; fewer cycles when not even one epoch each fits), and training stops before an epoch that
    # would overrun it. None: train cycles x cycle_epochs epochs, whatever they take.
    budget_minutes: float | None = _num(None, gt=0.0)


@dataclass(frozen=True, kw_only=True)
class LRFindConfig:
    enabled: bool = True
    start_lr: float = _num(1e-5, gt=0.0)
    end_lr: float = _num(1.0, gt=0.0)
    steps: int = _num(100, ge=2)
    smooth: float = _num(0.98, ge=0.0, lt=1.0)
    diverge: float = _num(4.0, gt=1.0)


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    device: Device = "auto"
    amp: bool = True  # CUDA: fp16 autocast + GradScaler
    # CPU: auto times a few real training steps in fp32 and bf16 autocast at start-up (cached per CPU and
    # model) and takes bf16 only where it is clearly faster; fp32 / bf16 force it. CUDA follows `amp`.
    precision: Precision = "auto"
    channels_last: bool | Literal["auto"] = "auto"  # auto: on with CUDA, measured on CPU
    threads: int | Literal["auto"] = _num("auto", ge=1)  # torch intra-op threads; auto: measured when it matters
    workers: int = _num(2, ge=0)
    val_batch_size: int = _num(32, ge=1)
    max_train_batches: int | None = _num(None, ge=1)  # cap per epoch, for tests and smoke runs


@dataclass(frozen=True, kw_only=True)
class PseudoConfig:
    """Pseudo-labelled test tiles beside the training tiles (``salt-exp pseudo`` sets ``labels``).

    Confidence rules, applied to an ensemble's test probabilities and its post-processed masks: a tile is kept
    *empty* when its highest probability is below ``empty_max_prob`` and the rules left it empty; *non-empty* when
    its mask is non-empty and at least ``min_confident_pixels`` of its pixels are below ``pixel_low`` or above
    ``pixel_high``; every other tile is dropped. ``share``: the probability that a training sample is drawn from
    the fold's pseudo-labelled tiles instead of its training tiles (an epoch keeps its number of batches).
    ``ignore_band``: a kept non-empty tile's pixels inside the band (``pixel_low`` <= p <= ``pixel_high``, where the
    mosaic rules left the thresholded mask as it was) are left out of the segmentation losses instead of trained on
    as the source's guesses (the classification head still sees the tile as non-empty); with it,
    ``min_confident_pixels`` can be lowered to keep more tiles. ``cycles``: pseudo tiles are drawn in the first
    ``cycles`` cosine cycles only (null: every cycle), e.g. 1 to keep them out of a Lovasz cycle
    (``loss.late_terms``). ``empty_share``: at most this share of a fold's kept tiles are empty; the surplus empty
    tiles are dropped, the least certain first (highest probability), so the pseudo tiles do not shift the batches
    toward empty tiles (null: no cap; a source that misses small salt keeps many empty verdicts). ``warm_start``:
    each fold run of the round starts from the weights of that fold's best source member (highest val_map; it never
    trained on the fold's validation tiles) instead of the encoder's initial weights; the round's config must build
    the same network. A round with ``share`` 0 and ``warm_start`` is the control: the same extra training without
    pseudo tiles.
    """

    labels: str = ""  # runs:/<run_id>/pseudo/labels.npz (a pseudo run's artifact) or that run's id; "": none
    share: float = _prob(0.5)
    empty_max_prob: float = _prob(0.2)
    pixel_low: float = _prob(0.1)
    pixel_high: float = _prob(0.9)
    min_confident_pixels: float = _prob(0.97)
    ignore_band: bool = False
    cycles: int | None = _num(None, ge=1)
    empty_share: float | None = _num(None, ge=0.0, lt=1.0)
    warm_start: bool = False
    # a round is refused when a pseudo tile would be drawn more than this many times as often as a training tile
    # (share / kept pseudo tiles against (1 - share) / training tiles): a handful of labels at share 0.5 would
    # fill half of every batch with the same few tiles
    max_oversampling: float = _num(4.0, gt=0.0)


@dataclass(frozen=True, kw_only=True)
class ContextConfig:
    """Mosaic context: what fills a tile's padding (``padding.size``, 128 by default: 13 / 14 pixels a side).

    ``mode``: ``none`` pads every tile (``padding.mode``); ``image`` copies the neighbouring tiles' pixels into the
    padding where the mosaic table places a neighbour (train or test tile, images only, never a mask) and pads the
    rest, so a tile's salt boundary can be seen continuing across its edge. The canvas keeps the model's input
    size: the compute is the plain model's. ``validity``: one more input plane, 1 on real pixels (the tile and its
    neighbours), 0 on padding. Loss and metric stay on the centre 101 x 101. A neighbour on the other side of the
    fold split (a validation tile beside a training tile, which only a non-mosaic folds scheme allows) is treated
    as absent, so no fold sees another's pixels. ``validity_init``: ``zero`` (default) gives the validity plane's
    first-convolution weights a zero start and draws every other weight as the plain model does (same seed, same
    weights), so a context model starts as the plain model and learns what the plane adds; ``random`` draws a
    wider first convolution (the first context runs, kept to reproduce them). ``dropout``: the probability that a
    training sample is given without its neighbours (the plain padded tile, validity on the tile only), so that the
    model keeps working where the mosaic has none (tiles outside mosaics, test tiles served alone).
    """

    mode: ContextMode = "none"
    validity: bool = True
    validity_init: ValidityInit = "zero"
    dropout: float = _prob(0.0)


SyncMode = Literal["auto", "always", "never"]  # not on/off: YAML 1.1 reads those as booleans


@dataclass(frozen=True, kw_only=True)
class SyncConfig:
    """A fold run's resume checkpoint copied to the run's artifacts, so that another machine can continue it.

    ``mode``: ``auto`` syncs when the run's artifacts do not live on this machine's disk (a tracking server's
    ``mlflow-artifacts:``, object storage), ``always``, or ``never`` (the checkpoint stays in ``$SALT_EXP_WORK``
    only). After an epoch, a sync is due once ``every_epochs`` epochs or ``every_minutes`` minutes (whichever comes
    first) passed since the last one, and is held back while the last measured upload time would exceed
    ``max_overhead`` of the training time since then. Not part of the config hash: it changes no result.
    """

    mode: SyncMode = "auto"
    every_epochs: int = _num(1, ge=1)
    every_minutes: float | None = _num(None, gt=0.0)
    max_overhead: float = _num(0.02, gt=0.0, le=1.0)


@dataclass(frozen=True, kw_only=True)
class ExperimentConfig:
    """One experiment. Config files may also hold ``extends:`` (read by :func:`salt_exp.config.load_config`)."""

    extra_keys: ClassVar[tuple[str, ...]] = ("extends",)

    name: str = "adhoc"
    seed: int = 42
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    padding: PaddingConfig = field(default_factory=PaddingConfig)
    context: ContextConfig = field(default_factory=ContextConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    lr_find: LRFindConfig = field(default_factory=LRFindConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pseudo: PseudoConfig = field(default_factory=PseudoConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)


def check_consistency(cfg: ExperimentConfig, where: str) -> None:
    """Rules that involve more than one field."""
    if cfg.optim.lr == "auto" and not cfg.lr_find.enabled:
        raise SaltError(f"{where}: optim.lr is 'auto' but lr_find.enabled is false; set optim.lr to a number")
    if cfg.padding.size % 32 or (cfg.padding.mode != "resize" and cfg.padding.size < 101):
        raise SaltError(f"{where}: padding.size must be a multiple of 32 and >= 101 unless padding.mode is resize, "
                        f"got {cfg.padding.size} with mode {cfg.padding.mode}")
    if cfg.lr_find.start_lr >= cfg.lr_find.end_lr:
        raise SaltError(f"{where}: lr_find.start_lr ({cfg.lr_find.start_lr}) must be < end_lr ({cfg.lr_find.end_lr})")
    if cfg.schedule.warmup_epochs >= cfg.schedule.cycle_epochs:
        raise SaltError(
            f"{where}: schedule.warmup_epochs must be < schedule.cycle_epochs ({cfg.schedule.cycle_epochs})"
        )
    from salt_exp.losses import SEG_LOSSES  # the loss-term names live with the losses

    for key in ("seg_terms", "late_terms"):
        unknown = [name for name in getattr(cfg.loss, key) or {} if name not in SEG_LOSSES]
        if unknown:
            raise SaltError(f"{where}: loss.{key} has unknown term {unknown[0]!r}; valid: {', '.join(SEG_LOSSES)}")
    if not cfg.loss.seg_terms:
        raise SaltError(f"{where}: loss.seg_terms is empty; give at least one term, e.g. {{bce: 1.0}}")
    low, high = cfg.augment.gamma_limit
    if low > high:
        raise SaltError(f"{where}: augment.gamma_limit must be [low, high] with low <= high, got {[low, high]}")
    _check_pseudo(cfg.pseudo, where)
    if cfg.context.mode != "none":
        if cfg.padding.mode == "resize":
            raise SaltError(f"{where}: context.mode {cfg.context.mode} fills the padding, so padding.mode must not be "
                            "resize (it has no padding)")
        if cfg.augment.shift_scale_rotate > 0:
            raise SaltError(f"{where}: augment.shift_scale_rotate is not supported with context.mode "
                            f"{cfg.context.mode} (it would move unlabelled neighbour pixels into the tile); set it to 0")


def _check_pseudo(p: PseudoConfig, where: str) -> None:
    if p.pixel_low >= p.pixel_high:
        raise SaltError(f"{where}: pseudo.pixel_low ({p.pixel_low}) must be < pseudo.pixel_high ({p.pixel_high})")
    if p.labels:
        from salt_exp.contract import parse_pseudo_labels  # the labels URI's form is the contract's

        try:
            parse_pseudo_labels(p.labels)
        except ValueError as exc:
            raise SaltError(f"{where}: pseudo.labels: {exc}") from None
