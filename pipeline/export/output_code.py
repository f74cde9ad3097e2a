"""A finer int8 output: each logit spread over `tiles` saturating int8 values (a thermometer).

A full-int8 model's output is one int8 tensor: 256 levels across the whole calibrated logit
range, a step of 0.05-0.07 logits on the default student. Two classes closer than one step get
the same int8 value and argmax takes the first: that caused 40 of 45 (phase 1) and 49 of 54
(phase 3) of the int8 model's disagreements with fp32 on all 3,360 split images
(bench/bench_int8_precision.py, BENCHMARKS.md).

The code cuts [low, low + tiles * width] into `tiles` intervals of `width` logits. Output
j * classes + c is ReLU6(6 / width * (logit_c - low - j * width)): 6 above tile j, 0 below,
linear inside. The network's last Linear layer computes all of them at once (its rows repeated,
scaled and shifted) and ends in ReLU6, which TFLite fuses into FULLY_CONNECTED, so the int8
output spans exactly [0, 6] and each tile resolves width / 255 logits. Decoding is a sum:
logit_c = low + width / 6 * sum_j out[j * classes + c]; argmax needs only the integer sums
(`<symbol>_top1` in the C header). Logits outside the covered range saturate; `margin`
widens it beyond the calibration images' range, at the cost of more tiles (flash).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from pipeline.errors import UserError

WINDOW = 6.0  # ReLU6: the clip TFLite fuses into FULLY_CONNECTED


@dataclass(frozen=True)
class OutputCode:
    classes: int
    tiles: int
    low: float
    width: float

    @property
    def outputs(self) -> int:
        return self.classes * self.tiles

    @property
    def logit_step(self) -> float:
        """The logit resolution of an int8 output (256 levels over [0, 6] per tile)."""
        return self.width / 255

    def decode(self, values: np.ndarray) -> np.ndarray:
        """(N, tiles * classes) dequantized outputs → (N, classes) logits."""
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 2 or values.shape[1] != self.outputs:
            raise ValueError(f"expected (N, {self.outputs}) coded outputs, got {values.shape}")
        tiles = values.reshape(len(values), self.tiles, self.classes)
        return (self.low + self.width / WINDOW * tiles.sum(1)).astype(np.float32)

    def to_dict(self) -> dict:
        return {**asdict(self), "logit_step": self.logit_step,
                "layout": "out[j * classes + c] for tile j, class c",
                "decode": "logit_c = low + width / 6 * sum_j out[j * classes + c]"}

    @classmethod
    def from_dict(cls, d: dict, source: str) -> OutputCode:
        try:
            code = cls(int(d["classes"]), int(d["tiles"]), float(d["low"]), float(d["width"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{source}: output_code needs numbers classes, tiles, low and width "
                            f"({exc!r}); re-export the model (dvc repro)") from exc
        if code.classes < 1 or code.tiles < 2 or not code.width > 0:
            raise UserError(f"{source}: output_code {d} is not a valid code; re-export the model")
        return code


def decoder(code: OutputCode | None) -> Callable[[np.ndarray], np.ndarray]:
    """Outputs → logits: `code.decode`, or the outputs unchanged for plain int8 logits."""
    return code.decode if code is not None else np.asarray


def fit_output_code(logits: np.ndarray, logit_step: float, margin: float) -> OutputCode:
    """The code covering the range of `logits` (N, C) widened by `margin` times it on each
    side, in tiles that resolve `logit_step` logits at 8 bits.

    One more tile sits below that range and one above, so on these images some output is
    always 6 and some always 0: the converter calibrates the output range from them, and
    it must be exactly [0, 6] for the tiles to add up.
    """
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or len(logits) == 0:
        raise ValueError(f"fit_output_code needs (N, C) logits, got shape {logits.shape}")
    if not logit_step > 0 or margin < 0:
        raise UserError(f"quantize.output_code: logit_step ({logit_step}) must be > 0 and "
                        f"margin ({margin}) >= 0")
    lo, hi = float(logits.min()), float(logits.max())
    pad = margin * max(hi - lo, 1e-6)
    width = 255 * logit_step
    tiles = math.ceil((hi - lo + 2 * pad) / width) + 2
    return OutputCode(logits.shape[1], tiles, lo - pad - width, width)


def edge_network(net: nn.Module, calibration: np.ndarray, logit_step: float | None,
                 margin: float) -> tuple[nn.Module, OutputCode | None]:
    """(the network the integer models are built from, its output code): `net` with the code
    fitted to its logits on `calibration` (N, 1, S, S), or `net` itself and None when
    `logit_step` is None (plain int8 logits). `net` must be in eval mode."""
    if logit_step is None:
        return net, None
    with torch.no_grad():
        logits = net(torch.from_numpy(np.ascontiguousarray(calibration))).numpy()
    code = fit_output_code(logits, logit_step, margin)
    return coded_net(net, code, calibration.shape[-1]), code


def coded_net(net: nn.Module, code: OutputCode, image_size: int) -> nn.Module:
    """A copy of `net` (in eval mode) whose final Linear layer outputs `code` (module doc).

    The Linear must be the network's last operation: the copy is checked against `net` on
    random (1, image_size, image_size) images.
    """
    edge = copy.deepcopy(net).eval()
    parent, name, linear = _final_linear(edge)
    if linear.out_features != code.classes:
        raise UserError(f"the classifier has {linear.out_features} outputs, the output code "
                        f"{code.classes} classes")
    scale = WINDOW / code.width
    offsets = code.low + code.width * torch.arange(code.tiles, dtype=torch.float64)
    tiled = nn.Linear(linear.in_features, code.outputs)
    with torch.no_grad():
        weight, bias = linear.weight.double(), linear.bias.double()
        tiled.weight.copy_(scale * weight.repeat(code.tiles, 1))
        tiled.bias.copy_(scale * (bias.repeat(code.tiles) - offsets.repeat_interleave(code.classes)))
    setattr(parent, name, nn.Sequential(tiled, nn.ReLU6()))
    _check_same_function(net, edge, code, image_size)
    return edge


def _final_linear(net: nn.Module) -> tuple[nn.Module, str, nn.Linear]:
    """(parent module, attribute name, layer) of the classifier: timm's get_classifier() or
    a `classifier` attribute (PlainCNN)."""
    backbone = getattr(net, "backbone", net)
    linear = backbone.get_classifier() if hasattr(backbone, "get_classifier") else \
        getattr(backbone, "classifier", None)
    if not isinstance(linear, nn.Linear) or linear.bias is None:
        raise UserError(f"quantize.output_code needs a final nn.Linear with bias; "
                        f"{type(backbone).__name__} ends in {type(linear).__name__}; "
                        "set quantize.output_code.logit_step=null")
    for qualified, module in net.named_modules():
        if module is linear:
            parent_name, _, name = qualified.rpartition(".")
            return net.get_submodule(parent_name), name, linear
    raise AssertionError("the classifier is not a submodule of the network")


def _check_same_function(net: nn.Module, edge: nn.Module, code: OutputCode,
                         image_size: int) -> None:
    x = torch.rand(4, 1, image_size, image_size, generator=torch.Generator().manual_seed(0))
    was_training = net.training
    with torch.no_grad():
        ref, got = net.eval()(x).numpy(), code.decode(edge(x).numpy())
    net.train(was_training)
    inside = (ref > code.low) & (ref < code.low + code.tiles * code.width)
    if not np.allclose(got[inside], ref[inside], atol=1e-3 * code.width):
        raise UserError("the output code does not reproduce the network's logits: its "
                        "classifier is not its last operation; set "
                        "quantize.output_code.logit_step=null")


def check_output_span(output: dict, source: object) -> None:
    """The coded output's integer range must map to [0, 6] (ReLU6 fused into the last layer):
    a narrower calibrated range would cap tiles below 6 and break decoding. `output`: the
    TFLite output tensor's dtype, scale and zero_point (tflite.tflite_io)."""
    info = np.iinfo(output["dtype"])
    low, high = output["scale"] * (np.array([info.min, info.max]) - output["zero_point"])
    if low > 1e-6 or high < WINDOW * (1 - 1e-3):
        raise RuntimeError(f"{source}: the coded output's integer range maps to [{low:.4g}, "
                           f"{high:.4g}], not [0, 6]; set quantize.output_code.logit_step=null")


def c_decoder(code: OutputCode, symbol: str, output: dict) -> str:
    """C++ for the model header: the code's constants, `<symbol>_top1(out)` (the class,
    integer sums only) and `<symbol>_logits(out, logits)`. `output`: the TFLite output
    tensor's dtype, scale and zero_point (tflite.tflite_io)."""
    ctype = {"int8": "int8_t", "int16": "int16_t"}[output["dtype"]]
    per_step = code.width / WINDOW * output["scale"]
    return f"""#include <cstdint>

// The output is an output code (pipeline/export/output_code.py): out[j * classes + c] is
// tile j of class c's logit, so logit_c = low + per_step * sum_j (out[j * classes + c] - zp).
constexpr int {symbol}_classes = {code.classes};
constexpr int {symbol}_tiles = {code.tiles};
constexpr float {symbol}_logit_low = {_c_float(code.low)};
constexpr float {symbol}_logit_per_step = {_c_float(per_step)};
constexpr int32_t {symbol}_output_zero_point = {output["zero_point"]};

// The class with the highest logit (the first on a tie), from integer sums alone.
inline int {symbol}_top1(const {ctype}* out) {{
  int best = 0;
  int32_t best_sum = 0;
  for (int c = 0; c < {symbol}_classes; ++c) {{
    int32_t sum = 0;
    for (int j = 0; j < {symbol}_tiles; ++j) sum += out[j * {symbol}_classes + c];
    if (c == 0 || sum > best_sum) {{
      best = c;
      best_sum = sum;
    }}
  }}
  return best;
}}

// Every class's logit (softmax of these gives the probabilities).
inline void {symbol}_logits(const {ctype}* out, float* logits) {{
  for (int c = 0; c < {symbol}_classes; ++c) {{
    int32_t sum = 0;
    for (int j = 0; j < {symbol}_tiles; ++j)
      sum += out[j * {symbol}_classes + c] - {symbol}_output_zero_point;
    logits[c] = {symbol}_logit_low + {symbol}_logit_per_step * sum;
  }}
}}
"""


def _c_float(value: float) -> str:
    text = f"{value:.9g}"
    return text + (".0f" if "." not in text and "e" not in text else "f")
