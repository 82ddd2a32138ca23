"""Concurrent spatial and channel squeeze-and-excitation (scSE).

Roy, Navab, Wachinger, "Concurrent Spatial and Channel Squeeze & Excitation in Fully
Convolutional Networks", MICCAI 2018 (arXiv:1803.02579). The two gates are ADDED:
``x * cSE(x) + x * sSE(x)``, as in the reference TGS pipeline.
"""

from __future__ import annotations

import torch
from torch import nn


class SCSE(nn.Module):
    """scSE gate on (B, C, H, W) features; output has the same shape."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.channel_gate = nn.Sequential(  # cSE: global pool -> bottleneck MLP -> sigmoid per channel
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1),
            nn.Sigmoid(),
        )
        self.spatial_gate = nn.Sequential(nn.Conv2d(channels, 1, 1), nn.Sigmoid())  # sSE: per pixel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.channel_gate(x) + x * self.spatial_gate(x)
