"""Give every channel of a plain CNN's activations the same range, without changing its output.

Full-int8 TFLite quantizes each activation tensor with one scale for all its channels, set by
the largest value of any channel. A channel whose values stay at a quarter of that maximum is
stored with a quarter of the levels. Because ReLU and max-pool commute with a positive
per-channel factor s, multiplying a block's BatchNorm output channel by s and dividing the
next layer's input weights for that channel by s leaves the network's function unchanged,
while the channel now spans the whole int8 range (cross-layer equalization for activations).
The next layer's weights are per-channel int8 too; rounding them to the int8 grid again
(pipeline.models.int8_grid) is what this costs.

What it buys is measured by bench/bench_int8_precision.py (BENCHMARKS.md).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from pipeline.models.plain_cnn import PlainCNN

# Channels this far below the layer's maximum are dead on the calibration images: leave them,
# or a huge factor would amplify whatever they do on other images.
_DEAD = 1e-3


def equalizable(net: nn.Module) -> bool:
    """Whether `equalize_activation_ranges` knows this network's structure (a PlainCNN)."""
    return isinstance(_backbone(net), PlainCNN)


@torch.no_grad()
def equalize_activation_ranges(net: nn.Module, batches: Iterable[Tensor]) -> list[float]:
    """Rescale a PlainCNN's blocks in place so each block's channels share one maximum.

    `batches`: model-input tensors (calibration images). `net` must be in eval mode (BatchNorm
    uses its running statistics). Returns, per block, the median channel maximum as a share of
    the block's maximum before equalization (1.0 means there was nothing to gain).
    """
    backbone = _backbone(net)
    if not isinstance(backbone, PlainCNN):
        raise TypeError(f"activation equalization supports PlainCNN, not {type(backbone).__name__}")
    if net.training:
        raise ValueError("equalize_activation_ranges needs the network in eval mode")
    layers = list(backbone.features)
    bns = [m for m in layers if isinstance(m, nn.BatchNorm2d)]
    relus = [m for m in layers if isinstance(m, nn.ReLU)]
    consumers = [m for m in layers if isinstance(m, nn.Conv2d)][1:] + [backbone.classifier]
    maxima = _channel_maxima(net, relus, batches)
    shares = []
    for bn, consumer, peak in zip(bns, consumers, maxima, strict=True):
        top = peak.max()
        factor = torch.where(peak > _DEAD * top, top / peak.clamp_min(1e-30), torch.ones_like(peak))
        bn.weight.mul_(factor)
        bn.bias.mul_(factor)
        shape = (1, -1) + (1,) * (consumer.weight.dim() - 2)
        consumer.weight.div_(factor.view(shape))
        shares.append(float((peak / top).median()) if top > 0 else 1.0)
    return shares


def _backbone(net: nn.Module) -> nn.Module:
    return getattr(net, "backbone", net)


def _channel_maxima(net: nn.Module, relus: list[nn.Module], batches: Iterable[Tensor]
                    ) -> list[Tensor]:
    """Each ReLU's per-channel maximum over all `batches` (max-pool keeps the maximum)."""
    maxima: list[Tensor | None] = [None] * len(relus)

    def record(i: int):
        def hook(_module, _inputs, output: Tensor) -> None:
            peak = output.amax((0, 2, 3))
            maxima[i] = peak if maxima[i] is None else torch.maximum(maxima[i], peak)
        return hook

    handles = [relu.register_forward_hook(record(i)) for i, relu in enumerate(relus)]
    try:
        for batch in batches:
            net(batch)
    finally:
        for handle in handles:
            handle.remove()
    if any(m is None for m in maxima):
        raise ValueError("equalize_activation_ranges needs at least one calibration batch")
    return maxima
