"""A small plain CNN baseline: three conv blocks, like the hackathon teams' models."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class PlainCNN(nn.Module):
    """[conv3x3-BN-ReLU, maxpool2] x len(widths) → global average pool → dropout → linear."""

    def __init__(
        self,
        num_classes: int,
        in_chans: int = 1,
        widths: Sequence[int] = (16, 32, 64),
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_chans
        for width in widths:
            layers += [
                nn.Conv2d(prev, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            prev = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(drop_rate)
        self.classifier = nn.Linear(prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.pool(self.features(x)).flatten(1)))
