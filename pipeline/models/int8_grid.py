"""Put a network's weights exactly on the int8 grid that per-channel quantization uses.

Per-channel symmetric int8 (TFLite, onnxruntime QDQ) stores each output channel's weights as
integers times max|w|/127. Snapping the float weights to that grid before delivery makes the
weight half of quantization lossless, so int8 differs from the delivered float model only in
its activations. It survives BatchNorm folding: folding multiplies a channel by one factor,
which multiplies its max|w| by the same factor, so the integers do not change.
"""

from __future__ import annotations

import torch
from torch import nn

INT8_MAX = 127


@torch.no_grad()
def snap_weights_to_int8_grid(net: nn.Module) -> int:
    """Round every Conv/Linear weight to its per-output-channel int8 grid in place.

    Returns the number of layers changed. Biases stay float (int8 kernels keep them in int32).
    """
    layers = [m for m in net.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]
    for layer in layers:
        w = layer.weight
        scale = w.abs().flatten(1).amax(1).clamp_min(torch.finfo(w.dtype).tiny) / INT8_MAX
        scale = scale.view((-1,) + (1,) * (w.dim() - 1))
        w.copy_(torch.round(w / scale) * scale)
    return len(layers)
