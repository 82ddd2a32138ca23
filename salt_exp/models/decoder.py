"""UNet decoder with optional scSE gates, and the hypercolumn that fuses its stages.

Each :class:`DecoderBlock` doubles the resolution: nearest upsample x2, concatenate the encoder
skip of that stride (if the encoder has one), two conv-bn-relu, optional scSE gate. The decoder
starts from the deepest encoder features and has one block per factor of 2 down to stride 1, so
its last stage is at the full input resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from salt_exp.errors import SaltError
from salt_exp.models.scse import SCSE


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class DecoderBlock(nn.Module):
    """(B, in, h, w) [+ skip (B, skip, 2h, 2w)] -> (B, out, 2h, 2w)."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, scse: bool) -> None:
        super().__init__()
        self.conv1 = conv_bn_relu(in_channels + skip_channels, out_channels)
        self.conv2 = conv_bn_relu(out_channels, out_channels)
        self.gate = SCSE(out_channels) if scse else nn.Identity()

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.gate(self.conv2(self.conv1(x)))


class UnetDecoder(nn.Module):
    """Encoder features (shallowest first) -> decoder stage outputs (coarsest first, last at stride 1)."""

    def __init__(
        self, encoder_channels: list[int], encoder_strides: list[int], decoder_channels: tuple[int, ...], scse: bool
    ) -> None:
        super().__init__()
        deepest = encoder_strides[-1]
        if 2 ** len(decoder_channels) != deepest:
            raise SaltError(
                f"decoder_channels has {len(decoder_channels)} stages but the encoder's deepest "
                f"stride is {deepest}: give {deepest.bit_length() - 1} stages to reach full resolution"
            )
        skips = dict(zip(encoder_strides[:-1], encoder_channels[:-1], strict=True))
        self.skip_index = []
        blocks = []
        in_ch, stride = encoder_channels[-1], deepest
        for out_ch in decoder_channels:
            stride //= 2
            self.skip_index.append(encoder_strides.index(stride) if stride in skips else None)
            blocks.append(DecoderBlock(in_ch, skips.get(stride, 0), out_ch, scse))
            in_ch = out_ch
        self.blocks = nn.ModuleList(blocks)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        x, stages = features[-1], []
        for block, index in zip(self.blocks, self.skip_index, strict=True):
            x = block(x, features[index] if index is not None else None)
            stages.append(x)
        return stages


class Hypercolumn(nn.Module):
    """All decoder stages upsampled to full size, concatenated, then a 1x1 conv (+bn, relu).

    Computed as ``sum_i upsample(conv1x1_i(stage_i))``: a 1x1 conv and bilinear upsampling are both
    linear and per-pixel/per-channel respectively, so they commute, and a 1x1 conv over a
    concatenation is the sum of 1x1 convs over its parts. The result equals the concatenate-first
    form exactly (tested) while never materialising the (B, sum(channels), H, W) tensor. Dropout2d
    (whole channels) on each stage equals Dropout2d on the concatenation.
    Input: stages (B, C_i, H / 2^k, W / 2^k), last at full size. Output: (B, out_channels, H, W).
    """

    def __init__(self, stage_channels: tuple[int, ...], out_channels: int, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.projections = nn.ModuleList(nn.Conv2d(c, out_channels, 1, bias=False) for c in stage_channels)
        self.post = nn.Sequential(nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))

    def forward(self, stages: list[torch.Tensor]) -> torch.Tensor:
        size = stages[-1].shape[-2:]
        out = None
        for proj, stage in zip(self.projections, stages, strict=True):
            y = proj(self.dropout(stage))
            if y.shape[-2:] != size:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            out = y if out is None else out + y
        return self.post(out)
