"""The int8 output code (pipeline.export.output_code) and activation equalization
(pipeline.models.equalize): both must leave the network's function unchanged."""

import shutil
import subprocess
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.errors import UserError
from pipeline.export.output_code import (
    OutputCode,
    c_decoder,
    check_output_span,
    coded_net,
    edge_network,
    fit_output_code,
)
from pipeline.models.backbones import build_backbone
from pipeline.models.equalize import equalizable, equalize_activation_ranges
from pipeline.models.plain_cnn import PlainCNN
from pipeline.models.preprocess import Normalize

SIZE = 64


def net_of(backbone: nn.Module, uneven_channels: bool = False) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(OrderedDict(normalize=Normalize(0.5, 0.25), backbone=backbone))
    for bn in net.modules():  # uneven BatchNorm scales, as after training
        if uneven_channels and isinstance(bn, nn.BatchNorm2d):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.data.uniform_(0.2, 3.0)
            bn.bias.data.uniform_(-0.5, 0.5)
    return net.eval()


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def quantize_8bit(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """An int8 tensor's round trip over [low, high] (256 levels), as TFLite stores outputs."""
    step = (high - low) / 255
    return low + np.round((np.clip(values, low, high) - low) / step) * step


def test_fit_covers_the_logit_range_with_margin():
    logits = np.array([[-3.0, 1.0], [0.5, 5.0]])
    code = fit_output_code(logits, logit_step=0.01, margin=0.25)
    assert code.classes == 2 and code.width == pytest.approx(2.55)
    # A whole tile below the widened range [-5, 7] and at least one above it.
    assert code.low == pytest.approx(-5.0 - 2.55)
    assert code.low + (code.tiles - 1) * code.width >= 7.0
    assert fit_output_code(np.zeros((3, 4)), 0.5, 0.0).tiles == 2  # never the plain width
    with pytest.raises(UserError, match="logit_step"):
        fit_output_code(logits, logit_step=0.0, margin=0.25)


def test_calibration_images_span_the_whole_output_range():
    """Some output is 6 and some 0 on every calibration image, even for a tiny logit range
    (the converter sets the int8 output range from what it sees)."""
    net = net_of(build_backbone("edge_cnn", 3))
    with torch.no_grad():
        net.backbone.classifier.weight.mul_(1e-3)  # logits within a few thousandths
    x = images(4)
    edge, _ = edge_network(net, x.numpy(), logit_step=0.01, margin=0.25)
    with torch.no_grad():
        out = edge(x)
    assert (out.amax(1) == 6).all() and (out.amin(1) == 0).all()


@pytest.mark.parametrize("backbone", ["edge_cnn", "mobilenetv3_small_050"])
def test_coded_net_decodes_to_the_same_logits(backbone):
    net = net_of(build_backbone(backbone, 5))
    x = images(8)
    edge, code = edge_network(net, x.numpy(), logit_step=0.01, margin=0.25)
    with torch.no_grad():
        ref, coded = net(x).numpy(), edge(x).numpy()
    assert coded.shape == (8, code.tiles * 5) and coded.min() >= 0 and coded.max() <= 6
    np.testing.assert_allclose(code.decode(coded), ref, atol=1e-4)
    assert edge_network(net, x.numpy(), logit_step=None, margin=0.25) == (net, None)


def test_eight_bit_code_keeps_the_order_plain_int8_ties():
    # The top two classes 0.02 logits apart; calibration saw logits from -7 to 5, so one
    # plain int8 step is 12 / 255 = 0.047.
    logits = np.array([[-7.0, 2.02, 2.04, -1.0]])
    plain = quantize_8bit(logits, -7.0, 5.0)
    assert plain[0, 1] == plain[0, 2] and plain.argmax(1)[0] == 1  # tied: argmax takes class 1
    code = fit_output_code(np.array([[-7.0, 5.0, 0.0, 0.0]]), logit_step=0.01, margin=0.0)
    linear = nn.Linear(1, 4)
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.copy_(torch.from_numpy(logits[0]))
    edge = coded_net(nn.Sequential(OrderedDict(backbone=_Head(linear))), code, image_size=1)
    with torch.no_grad():
        out = edge(torch.zeros(1, 1, 1, 1)).numpy()
    decoded = code.decode(quantize_8bit(out, 0.0, 6.0))
    assert decoded.argmax(1)[0] == 2
    # Saturated tiles (0 or 6) are exact: only the tile a logit falls in rounds.
    assert np.abs(decoded - logits).max() <= code.logit_step / 2 + 1e-6


class _Head(nn.Module):
    """A classifier-only network: its logits are the Linear's bias."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.classifier = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x.flatten(1))


def test_coded_net_refuses_a_classifier_that_is_not_last():
    net = net_of(build_backbone("edge_cnn", 3))
    net.add_module("squash", nn.Tanh())
    code = OutputCode(3, 4, -3.0, 2.0)
    with pytest.raises(UserError, match="not its last operation"):
        coded_net(net, code, SIZE)


def test_output_span_must_be_zero_to_six():
    check_output_span({"dtype": "int8", "scale": 6 / 255, "zero_point": -128}, "m.tflite")
    check_output_span({"dtype": "int16", "scale": 6 / 65535, "zero_point": -32768}, "m.tflite")
    with pytest.raises(RuntimeError, match=r"m.tflite.*not \[0, 6\]"):
        check_output_span({"dtype": "int8", "scale": 5.35 / 255, "zero_point": -128}, "m.tflite")


def test_code_from_a_manifest_is_checked():
    code = OutputCode(3, 4, -3.0, 2.0)
    assert OutputCode.from_dict(code.to_dict(), "m.json") == code
    with pytest.raises(UserError, match="m.json"):
        OutputCode.from_dict({"classes": 3, "tiles": 4}, "m.json")
    with pytest.raises(UserError, match="not a valid code"):
        OutputCode.from_dict({**code.to_dict(), "tiles": 1}, "m.json")


def test_header_decoder_compiles_and_matches_python(tmp_path):
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ not installed")
    code = OutputCode(classes=3, tiles=2, low=-4.0, width=2.55)
    out = np.array([127, 127, -128, 40, 41, -128], dtype=np.int8)  # class 1 just above class 0
    scale, zero_point = 6 / 255, -128
    header = tmp_path / "model.h"
    header.write_text(c_decoder(code, "g_model", {"dtype": "int8", "scale": scale,
                                                  "zero_point": zero_point}))
    main = tmp_path / "main.cc"
    main.write_text('#include <cstdio>\n#include "model.h"\nint main() {\n'
                    f'  const int8_t out[] = {{{", ".join(map(str, out))}}};\n'
                    '  float logits[3];\n  g_model_logits(out, logits);\n'
                    '  std::printf("%d %.6f %.6f %.6f\\n", g_model_top1(out), logits[0], '
                    'logits[1], logits[2]);\n}\n')
    subprocess.run([gxx, "-std=c++17", "-Wall", "-Werror", str(main), "-o",
                    str(tmp_path / "main")], check=True)
    top1, *logits = subprocess.run([str(tmp_path / "main")], capture_output=True, text=True,
                                   check=True).stdout.split()
    expected = code.decode(((out.astype(np.float64) - zero_point) * scale)[None])[0]
    assert int(top1) == int(expected.argmax()) == 1
    np.testing.assert_allclose([float(v) for v in logits], expected, atol=1e-4)


def test_equalization_keeps_the_function_and_evens_the_channels():
    net = net_of(PlainCNN(4, widths=(8, 16, 32)), uneven_channels=True)
    assert equalizable(net) and not equalizable(net_of(build_backbone("mobilenetv3_small_050", 4)))
    x = images(16)
    with torch.no_grad():
        ref = net(x)
    shares = equalize_activation_ranges(net, [x[:8], x[8:]])
    assert len(shares) == 3 and all(0 < s <= 1 for s in shares) and min(shares) < 0.9
    with torch.no_grad():
        torch.testing.assert_close(net(x), ref, atol=1e-4, rtol=1e-4)
    # Every live channel of every block now peaks at its block's maximum.
    peaks = []
    hooks = [m.register_forward_hook(lambda _m, _i, o: peaks.append(o.amax((0, 2, 3))))
             for m in net.backbone.features if isinstance(m, nn.ReLU)]
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    for peak in peaks:
        live = peak > 1e-3 * peak.max()
        torch.testing.assert_close(peak[live], peak.max().expand(int(live.sum())), rtol=1e-4,
                                   atol=1e-6)


def test_equalization_refuses_what_it_cannot_do():
    with pytest.raises(TypeError, match="PlainCNN"):
        equalize_activation_ranges(net_of(build_backbone("mobilenetv3_small_050", 4)),
                                   [images(2)])
    net = net_of(PlainCNN(4, widths=(8, 16)))
    with pytest.raises(ValueError, match="at least one calibration batch"):
        equalize_activation_ranges(net, [])
    with pytest.raises(ValueError, match="eval mode"):
        equalize_activation_ranges(net.train(), [images(2)])
