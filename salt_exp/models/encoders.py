"""Encoder registry: backbones that return multi-scale feature maps for the UNet decoder.

Two families:

- ``pretrainedmodels`` (Cadene): ``se_resnext50_32x4d``, ``se_resnext101_32x4d``, ``senet154``,
  ``resnet34``. Built with ``pretrained=None`` (never downloads); the classifier (fixed 7x7 pool,
  dropout, last_linear) is removed, so any input size works.
- ``timm``: any timm model that supports ``features_only``, named ``timm/<name>``.

Every encoder is an :class:`Encoder`: ``forward(x (B, in_channels, H, W)) -> list of feature maps``,
shallowest first, with ``out_channels[i]`` channels at ``strides[i]`` (H / strides[i] pixels high).
pretrainedmodels is imported lazily (slow, and it prints warnings on import).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from salt_exp.errors import SaltError
from salt_exp.models.weights import import_pretrainedmodels, load_encoder_weights, resolve_timm_imagenet_file

# A curated set of timm backbones listed by `salt-exp models`; any timm/<name> with
# features_only support is accepted by build_encoder.
TIMM_CURATED = (
    "timm/resnet18",
    "timm/resnet34",
    "timm/legacy_seresnext50_32x4d",
    "timm/seresnext50_32x4d",
    "timm/efficientnet_b0",
    "timm/efficientnet_b3",
    "timm/convnext_tiny",
)
TIMM_PREFIX = "timm/"


class Encoder(nn.Module):
    """Base class: ``forward(x) -> list[Tensor]``; ``model`` holds the wrapped backbone."""

    out_channels: list[int]
    strides: list[int]
    model: nn.Module


class PretrainedModelsResNet(Encoder):
    """pretrainedmodels/torchvision ResNet: stem (stride 2), then layer1..layer4 (strides 4..32)."""

    def __init__(self, model: nn.Module, in_channels: int) -> None:
        super().__init__()
        model.last_linear = None  # classifier unused; keeps state_dict = backbone only
        model.avgpool = None
        if in_channels != 3:
            model.conv1 = _replace_conv_in(model.conv1, in_channels)
        self.model = model
        widths = [
            model.layer1[-1].conv2.out_channels,
            model.layer2[-1].conv2.out_channels,
            model.layer3[-1].conv2.out_channels,
            model.layer4[-1].conv2.out_channels,
        ]
        self.out_channels = [model.conv1.out_channels, *widths]
        self.strides = [2, 4, 8, 16, 32]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        m = self.model
        f1 = m.relu(m.bn1(m.conv1(x)))
        f2 = m.layer1(m.maxpool(f1))
        f3 = m.layer2(f2)
        f4 = m.layer3(f3)
        return [f1, f2, f3, f4, m.layer4(f4)]


class PretrainedModelsSENet(Encoder):
    """pretrainedmodels SENet / SE-ResNeXt: layer0 minus its max-pool (stride 2), layer1..layer4."""

    def __init__(self, model: nn.Module, in_channels: int) -> None:
        super().__init__()
        model.avg_pool = None  # fixed 7x7 pool of the classifier: would break non-224 inputs
        model.dropout = None
        model.last_linear = None
        if in_channels != 3:
            model.layer0.conv1 = _replace_conv_in(model.layer0.conv1, in_channels)
        self.model = model
        stem = [m for m in model.layer0 if isinstance(m, nn.Conv2d)][-1]
        self.out_channels = [stem.out_channels] + [_block_out(getattr(model, f"layer{i}")) for i in range(1, 5)]
        self.strides = [2, 4, 8, 16, 32]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        m = self.model
        stem = m.layer0
        f1 = x
        for name, module in stem.named_children():
            if name != "pool":
                f1 = module(f1)
        f2 = m.layer1(stem.pool(f1))
        f3 = m.layer2(f2)
        f4 = m.layer3(f3)
        return [f1, f2, f3, f4, m.layer4(f4)]


class TimmEncoder(Encoder):
    """A timm ``features_only`` model; strides and channels come from its ``feature_info``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.out_channels = list(model.feature_info.channels())
        self.strides = list(model.feature_info.reduction())

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.model(x))


def _block_out(layer: nn.Sequential) -> int:
    return layer[-1].conv3.out_channels


def _replace_conv_in(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    return nn.Conv2d(
        in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=conv.bias is not None
    )


@dataclass(frozen=True)
class _PMSpec:
    family: str
    wrapper: type[Encoder]
    module: str  # pretrainedmodels.models submodule holding the constructor


_PRETRAINEDMODELS: dict[str, _PMSpec] = {
    "resnet34": _PMSpec("pretrainedmodels", PretrainedModelsResNet, "torchvision_models"),
    "se_resnext50_32x4d": _PMSpec("pretrainedmodels", PretrainedModelsSENet, "senet"),
    "se_resnext101_32x4d": _PMSpec("pretrainedmodels", PretrainedModelsSENet, "senet"),
    "senet154": _PMSpec("pretrainedmodels", PretrainedModelsSENet, "senet"),
}


def encoder_names() -> list[str]:
    """Registered names: the pretrainedmodels backbones and the curated timm ones."""
    return [*_PRETRAINEDMODELS, *TIMM_CURATED]


def _unknown(name: str) -> SaltError:
    return SaltError(
        f"unknown encoder {name!r}; valid: {', '.join(encoder_names())}, "
        f"or timm/<name> for any timm model supporting features_only"
    )


def _pretrainedmodels_constructor(name: str, module: str) -> Callable[..., nn.Module]:
    return getattr(import_pretrainedmodels(module), name)


def _build_pretrainedmodels(name: str, in_channels: int, weights: str) -> Encoder:
    spec = _PRETRAINEDMODELS[name]
    constructor = _pretrainedmodels_constructor(name, spec.module)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = constructor(num_classes=1000, pretrained=None)  # never downloads
    encoder = spec.wrapper(model, in_channels)
    if weights != "none":
        load_encoder_weights(encoder, name, weights)
    return encoder


def _build_timm(name: str, in_channels: int, weights: str) -> Encoder:
    import timm

    arch = name[len(TIMM_PREFIX) :]
    if not arch or not timm.is_model(arch.partition(".")[0]):  # "name.tag" names a pretrained tag
        raise _unknown(name)
    kwargs: dict = {"features_only": True, "in_chans": in_channels}
    if weights == "imagenet":
        # timm adapts the first conv itself when loading (sum for 1 channel, repeat+scale else)
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(resolve_timm_imagenet_file(arch))})
    try:
        model = timm.create_model(arch, pretrained=kwargs.pop("pretrained", False), **kwargs)
    except (RuntimeError, TypeError, AttributeError, AssertionError) as exc:
        raise SaltError(f"timm model {arch!r} cannot be built with features_only: {exc}") from exc
    encoder = TimmEncoder(model)
    if weights not in ("none", "imagenet"):
        load_encoder_weights(encoder, name, weights)
    return encoder


def build_encoder(name: str, weights: str = "none", in_channels: int = 1) -> Encoder:
    """Build encoder ``name`` for ``in_channels``-channel input.

    ``weights``: ``"none"`` (random init), ``"imagenet"`` (from the local torch hub / HF cache only,
    SaltError naming the file to place when absent), or a path to a state_dict file (pretrainedmodels,
    torchvision or timm key names; the first conv is adapted when it was trained on 3 channels).
    """
    if in_channels < 1:
        raise SaltError(f"in_channels must be >= 1, got {in_channels}")
    if name in _PRETRAINEDMODELS:
        return _build_pretrainedmodels(name, in_channels, weights)
    if name.startswith(TIMM_PREFIX):
        return _build_timm(name, in_channels, weights)
    raise _unknown(name)


def widen_input(encoder: Encoder, extra: int) -> None:
    """Give ``encoder``'s first convolution ``extra`` more input planes whose weights are zero, in place.

    The planes' weights start at zero, so the widened encoder computes exactly what it did before on any input
    (a context model's validity plane then starts as "no effect", and the seeded draws of every other weight are
    the unwidened model's); the weights are trained like any other from the first step. Pretrained weights
    loaded before widening are kept.
    """
    if extra < 0:
        raise SaltError(f"extra input planes must be >= 0, got {extra}")
    if extra == 0:
        return
    name, conv = next(((n, m) for n, m in encoder.named_modules() if isinstance(m, nn.Conv2d)), ("", None))
    if conv is None or conv.groups != 1:
        raise SaltError(f"{type(encoder).__name__}: no plain first convolution to widen by {extra} input planes")
    path, _, attr = name.rpartition(".")
    parent = encoder.get_submodule(path)
    wide = nn.utils.skip_init(  # no random draws: the seeded draws of the layers built after it stay the same
        nn.Conv2d, conv.in_channels + extra, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
        conv.dilation, bias=conv.bias is not None, padding_mode=conv.padding_mode, device=conv.weight.device,
        dtype=conv.weight.dtype)
    with torch.no_grad():
        wide.weight.zero_()
        wide.weight[:, : conv.in_channels].copy_(conv.weight)
        if conv.bias is not None:
            wide.bias.copy_(conv.bias)
    setattr(parent, attr, wide)


def list_encoders() -> list[dict]:
    """``[{"name", "family", "params"}]`` for every registered name; builds each (weights none)."""
    rows = []
    for name in encoder_names():
        encoder = build_encoder(name, weights="none", in_channels=3)
        family = "timm" if name.startswith(TIMM_PREFIX) else _PRETRAINEDMODELS[name].family
        rows.append({"name": name, "family": family, "params": sum(p.numel() for p in encoder.parameters())})
    return rows
