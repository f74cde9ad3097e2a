"""Swap activations that TensorFlow Lite Micro cannot run for numerically identical ones.

TFLM has no RELU_0_TO_1 kernel, which is what converters emit for a hard sigmoid, so
MobileNetV3's squeeze-excite gates would stay float. `relu6(x + 3) / 6` is the same function
and lowers to RELU6 + ADD + MUL, which TFLM runs in int8. Hard-swish is kept: TFLM has an
int8 HARD_SWISH kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers.activations import HardSigmoid
from timm.layers.activations_me import HardSigmoidMe
from torch import nn

_HARD_SIGMOIDS = (nn.Hardsigmoid, HardSigmoid, HardSigmoidMe)


class HardSigmoidTFLM(nn.Module):
    """Hard sigmoid written as relu6(x + 3) / 6 (TFLM has no RELU_0_TO_1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(x + 3.0) / 6.0


def make_export_safe(model: nn.Module) -> nn.Module:
    """Replace every hard-sigmoid module in place with HardSigmoidTFLM; return the model."""
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, _HARD_SIGMOIDS):
                setattr(parent, name, HardSigmoidTFLM())
    return model
