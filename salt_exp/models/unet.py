"""SaltNet: encoder + UNet decoder (+ scSE, hypercolumn, deep-supervision heads), and its factory."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from salt_exp.errors import SaltError
from salt_exp.models.decoder import Hypercolumn, UnetDecoder
from salt_exp.models.encoders import build_encoder, widen_input
from salt_exp.models.heads import HEAD_CHANNELS, ClassificationHead, FusionHead, PixelHead


@dataclass
class SaltOutput:
    """Model outputs, all LOGITS. ``seg`` and ``cls`` are None without deep supervision."""

    fused: torch.Tensor  # (B, 1, H, W) logits: the final prediction
    seg: torch.Tensor | None = None  # (B, 1, H, W) logits: segmentation branch (non-empty samples)
    cls: torch.Tensor | None = None  # (B,) logits: tile is non-empty

    def map_spatial(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> SaltOutput:
        """Apply ``fn`` (e.g. ``TileAdapter.crop``) to the (B, 1, H, W) outputs; ``cls`` is kept."""
        return SaltOutput(fused=fn(self.fused), seg=None if self.seg is None else fn(self.seg), cls=self.cls)


class SaltNet(nn.Module):
    """(B, in_channels, H, W) float, H and W multiples of the encoder's deepest stride -> SaltOutput."""

    def __init__(
        self,
        encoder: nn.Module,
        decoder_channels: tuple[int, ...],
        *,
        scse: bool,
        hypercolumn: bool,
        deep_supervision: bool,
        dropout: float,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = UnetDecoder(encoder.out_channels, encoder.strides, decoder_channels, scse)
        if hypercolumn:
            self.fuse_stages = Hypercolumn(decoder_channels, HEAD_CHANNELS, dropout)
            head_in = HEAD_CHANNELS
        else:
            self.fuse_stages = _LastStage(dropout)
            head_in = decoder_channels[-1]
        self.pixel_head = PixelHead(head_in)
        self.deep_supervision = deep_supervision
        if deep_supervision:
            self.cls_head = ClassificationHead(encoder.out_channels[-1], dropout)
            self.fusion_head = FusionHead()

    def forward(self, x: torch.Tensor) -> SaltOutput:
        features = self.encoder(x)
        pixel, seg = self.pixel_head(self.fuse_stages(self.decoder(features)))
        if not self.deep_supervision:
            return SaltOutput(fused=seg)
        image, cls = self.cls_head(features[-1])
        return SaltOutput(fused=self.fusion_head(pixel, image), seg=seg, cls=cls)


class _LastStage(nn.Module):
    """Without hypercolumns the head sees the last (full-resolution) decoder stage, after dropout."""

    def __init__(self, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()

    def forward(self, stages: list[torch.Tensor]) -> torch.Tensor:
        return self.dropout(stages[-1])


def build_model(
    encoder: str = "resnet34",
    *,
    weights: str = "none",
    in_channels: int = 1,
    extra_channels: int = 0,
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16),
    scse: bool = True,
    hypercolumn: bool = True,
    deep_supervision: bool = True,
    dropout: float = 0.0,
) -> SaltNet:
    """Build the UNet; ``encoder``/``weights`` as in :func:`salt_exp.models.encoders.build_encoder`.

    ``extra_channels``: input planes after the ``in_channels`` image planes whose first-convolution weights start
    at zero (:func:`salt_exp.models.encoders.widen_input`): the model is built, and its weights drawn, as for
    ``in_channels`` alone, so on its first step it ignores them.
    """
    if not 0.0 <= dropout < 1.0:
        raise SaltError(f"dropout must be in [0, 1), got {dropout}")
    if not decoder_channels or min(decoder_channels) < 1:
        raise SaltError(f"decoder_channels must be positive integers, got {decoder_channels}")
    backbone = build_encoder(encoder, weights=weights, in_channels=in_channels)
    widen_input(backbone, extra_channels)
    return SaltNet(
        backbone,
        tuple(decoder_channels),
        scse=scse,
        hypercolumn=hypercolumn,
        deep_supervision=deep_supervision,
        dropout=dropout,
    )
