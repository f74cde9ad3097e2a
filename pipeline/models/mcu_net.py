"""MCU-style inverted-residual students, registered as timm models (timm's EfficientNet
builder builds them, so `timm.create_model("mcu_irnet", ...)` and every timm tool work).

Design rules from MCUNet (Lin et al. 2020) for a 256 KB SRAM / ~500 KB flash board: ReLU6
(bounded, int8-friendly) and no squeeze-excite or hard-swish; a stride-2 stem and small
expansion ratios at the high-resolution stages, which set the peak activation memory (the
TFLM arena); larger kernels (5, 7) and expansion 6 only where the maps are small; a narrow
1x1 conv head, since 9-11 classes need few features and the head's weights cost flash.
"""

from __future__ import annotations

from timm.models import generate_default_cfgs, register_model
from timm.models._efficientnet_builder import decode_arch_def
from timm.models.efficientnet import _create_effnet
from torch import nn

# Stage strings as timm writes them: ir = inverted residual, r = repeats, k = kernel,
# s = stride, e = expansion, c = output channels. Resolutions are for a 128 px input.
MCU_IRNET_ARCH = [
    ["ds_r1_k3_s1_c8"],  # 64x64
    ["ir_r2_k3_s2_e2_c16"],  # 32x32
    ["ir_r2_k5_s2_e4_c24"],  # 16x16
    ["ir_r3_k5_s2_e4_c40"],  # 8x8
    ["ir_r2_k3_s1_e5_c48"],
    ["ir_r2_k5_s2_e6_c72"],  # 4x4
    ["ir_r1_k3_s1_e6_c112"],
]
# No weights exist; the entry only tells timm the input the model expects.
default_cfgs = generate_default_cfgs({"mcu_irnet.untrained": {
    "num_classes": 1000, "input_size": (1, 128, 128), "mean": (0.5,), "std": (0.5,)}})


@register_model
def mcu_irnet(pretrained: bool = False, **kwargs):
    """The MCU-style inverted-residual student: 0.34 M parameters, 18 M MACs at 128 px."""
    if pretrained:
        raise RuntimeError("mcu_irnet has no pretrained weights")
    return _create_effnet("mcu_irnet", pretrained=False,
                          block_args=decode_arch_def(MCU_IRNET_ARCH), num_features=256,
                          stem_size=16, act_layer=nn.ReLU6, norm_layer=nn.BatchNorm2d,
                          **kwargs)
