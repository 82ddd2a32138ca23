"""Output heads: pixel (segmentation), image classification (empty vs non-empty), and fusion.

All heads return LOGITS. Deep supervision (as in the reference pipeline, an 11th-place TGS solution):
``cls`` from the deepest encoder features, ``seg`` from the decoder features, and ``fused`` from
the decoder features concatenated with the classification features broadcast over the image.
"""

from __future__ import annotations

import torch
from torch import nn

HEAD_CHANNELS = 16  # width of the pixel and classification features feeding the 1-channel logits


class PixelHead(nn.Module):
    """(B, C, H, W) features -> (pixel features (B, HEAD_CHANNELS, H, W), logit (B, 1, H, W))."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_channels, HEAD_CHANNELS, 3, padding=1), nn.ReLU(inplace=True))
        self.logit = nn.Conv2d(HEAD_CHANNELS, 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(x)
        return features, self.logit(features)


class ClassificationHead(nn.Module):
    """Deepest encoder features (B, C, h, w) -> (features (B, HEAD_CHANNELS), logit (B,))."""

    def __init__(self, in_channels: int, dropout: float) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.features = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(in_channels, HEAD_CHANNELS), nn.ReLU(inplace=True)
        )
        self.logit = nn.Linear(HEAD_CHANNELS, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(self.pool(x))
        return features, self.logit(features).squeeze(1)


class FusionHead(nn.Module):
    """Pixel features (B, P, H, W) + classification features (B, Q) broadcast -> logit (B, 1, H, W).

    A 1x1 conv over ``cat([pixel, broadcast(image)])`` equals ``conv1x1(pixel) + linear(image)``
    added per image, so the broadcast (B, Q, H, W) tensor is never materialised.
    """

    def __init__(self) -> None:
        super().__init__()
        self.pixel = nn.Conv2d(HEAD_CHANNELS, HEAD_CHANNELS, 1)
        self.image = nn.Linear(HEAD_CHANNELS, HEAD_CHANNELS, bias=False)
        self.logit = nn.Sequential(nn.ReLU(inplace=True), nn.Conv2d(HEAD_CHANNELS, 1, 1))

    def forward(self, pixel: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        fused = self.pixel(pixel) + self.image(image).to(pixel.dtype)[:, :, None, None]
        return self.logit(fused)
