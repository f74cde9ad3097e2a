"""Plain CNNs: conv-BN-ReLU-maxpool blocks, the hackathon baseline and the int8-friendly
student (named presets in `backbones.PLAIN_CNNS`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class PlainCNN(nn.Module):
    """[conv3x3-BN-ReLU, maxpool2] x len(widths) → global average pool → dropout → linear.

    `stem_stride` 2 makes the first conv strided, which quarters the largest activation map
    (the TFLM arena) and the MACs of every later block.
    """

    def __init__(
        self,
        num_classes: int,
        in_chans: int = 1,
        widths: Sequence[int] = (16, 32, 64),
        drop_rate: float = 0.0,
        stem_stride: int = 1,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_chans
        for i, width in enumerate(widths):
            layers += [
                nn.Conv2d(prev, width, 3, stride=stem_stride if i == 0 else 1, padding=1,
                          bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            prev = width
        self.features = nn.Sequential(*layers)
        # Each block halves the map, and so does a strided stem: smaller inputs vanish.
        self.min_input_size = stem_stride * 2 ** len(widths)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(drop_rate)
        self.classifier = nn.Linear(prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.pool(self.features(x)).flatten(1)))
