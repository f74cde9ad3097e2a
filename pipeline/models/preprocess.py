"""The preprocessing spec stored with every model: the single source of truth for its input.

Contract: a model (and its ONNX/TFLite export) takes a float image in [0, 1], shape
(B, 1, S, S), made by `Preprocess.__call__`. Mean/std normalisation is the first layer inside
the network (`Normalize`), not a step outside it. Why: the int8 graph's input then has
scale 1/255, so a device feeds raw 8-bit pixels (minus the zero point) with no float math, and
training, evaluation, export and inference cannot disagree about mean/std.

Normalize is a single 1x1 convolution and the mean sits on the 8-bit grid (a whole number of
1/255 steps): the converter then keeps it as one exact integer op. Written as subtract-then-
divide, TFLite gave the intermediate (x - mean) the scale of the divided output, leaving the
network about 60 distinct input levels instead of 256.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.data.images import to_model_input
from pipeline.errors import UserError


@dataclass(frozen=True)
class Preprocess:
    """Input size and the normalisation the network applies to its [0, 1] input."""

    image_size: int
    mean: float = 0.5  # on the [0, 1] scale
    std: float = 0.25

    def __post_init__(self) -> None:
        if self.image_size < 8 or self.std <= 0:
            raise UserError(
                f"preprocess: image_size must be >= 8 and std > 0 (got {self}); fix the model config"
            )
        # Snap the mean to the nearest 8-bit level (0.5 -> 128/255) so an int8 input maps to
        # the normalised zero exactly; the stored spec is the value the network uses.
        object.__setattr__(self, "mean", round(self.mean * 255) / 255)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"preprocess: unknown keys {unknown}; allowed keys are {sorted(known)}")
        if "image_size" not in d:
            raise UserError("preprocess: 'image_size' is missing; set it in the model config")
        return cls(int(d["image_size"]), float(d.get("mean", 0.5)), float(d.get("std", 0.25)))

    def __call__(self, img_uint8_hw: np.ndarray) -> np.ndarray:
        """uint8 (H, W) → float32 (1, S, S) in [0, 1]: the exact model input (see module doc)."""
        img = to_model_input(img_uint8_hw, self.image_size)
        return (img.astype(np.float32) / 255.0)[None]

    def fit_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Resize a [0, 1] batch (B, 1, H, W) to this size on-tensor (no-op if it matches).

        Used when one batch feeds models of different sizes (distillation); antialiased
        bilinear downscaling is close to the INTER_AREA resize of `__call__`.
        """
        if x.shape[-2:] == (self.image_size, self.image_size):
            return x
        return F.interpolate(
            x,
            size=(self.image_size, self.image_size),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )


class Normalize(nn.Module):
    """(x - mean) / std as one 1x1 convolution (see module doc); the network's first layer."""

    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        # Not persistent: the values live in the checkpoint's hyper-parameters (Preprocess).
        self.register_buffer("weight", torch.full((1, 1, 1, 1), 1.0 / std), persistent=False)
        self.register_buffer("bias", torch.tensor([-mean / std]), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias)
