"""ONNX fp32 → ONNX int8 (QDQ, static calibration: MinMax, percentile or entropy) with onnxruntime.

The delivered graph stores activations and weights as uint8 (U8U8). onnxruntime's u8s8 kernels
on x86 CPUs with AVX2 but no VNNI sum pairs of u8 x s8 products in int16 with saturation
(VPMADDUBSW; its quantization docs), which moved logits by up to 1.8 on such a machine; its
U8U8 kernels widen to 16 bits first and are exact on every x86 CPU. The graph is quantized
as symmetric int8 first and then shifted by 128 losslessly, so weights stay exactly on the
per-channel int8 grid (`pipeline.models.int8_grid`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from pipeline.errors import UserError
from pipeline.files import atomic_path


class ArrayReader(CalibrationDataReader):
    """Feeds calibration images one at a time (the graph has a static batch of 1)."""

    def __init__(self, input_name: str, images: np.ndarray) -> None:
        self._name = input_name
        self._images = images
        self._i = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._i >= len(self._images):
            return None
        self._i += 1
        return {self._name: self._images[self._i - 1: self._i]}

    def rewind(self) -> None:
        self._i = 0


def check_calibration(calibration: np.ndarray, image_size: int) -> np.ndarray:
    """Calibration images as float32 (N, 1, S, S) in [0, 1]; UserError otherwise."""
    cal = np.asarray(calibration)
    if cal.ndim != 4 or cal.shape[1:] != (1, image_size, image_size) or len(cal) == 0:
        raise UserError(f"calibration images have shape {cal.shape}; expected (N, 1, {image_size}, "
                        f"{image_size}) with N >= 1 — pass images at the model's input size")
    if not np.isfinite(cal).all() or cal.min() < 0.0 or cal.max() > 1.0:
        raise UserError("calibration images must be float in [0, 1] (the model input contract); "
                        "build them with the model's Preprocess")
    return cal.astype(np.float32, copy=False)


def onnx_input(path: Path) -> tuple[str, int]:
    """(input name, image size) of a single-input (B, 1, S, S) ONNX model."""
    graph = onnx.load(str(path), load_external_data=False).graph
    inp = graph.input[0]
    return inp.name, int(inp.type.tensor_type.shape.dim[-1].dim_value)


CALIBRATION_METHODS = {"minmax": CalibrationMethod.MinMax,
                       "percentile": CalibrationMethod.Percentile,
                       "entropy": CalibrationMethod.Entropy}


def quantize_onnx_int8(fp32_path: Path, out_path: Path, calibration: np.ndarray, *,
                       per_channel: bool = True, method: str = "minmax",
                       percentile: float = 99.99, work_dir: Path | None = None) -> Path:
    """Static int8 QDQ quantization of `fp32_path`, calibrated on `calibration`.

    `calibration` is float32 (N, 1, S, S) in [0, 1], e.g. ~100+ train/val images. `method`
    picks how activation ranges are set: "minmax" (full observed range), "percentile" (clip at
    the `percentile`-th of |x|, so rare extremes do not coarsen every other value) or "entropy".
    Intermediate files go under `work_dir` (default: the system's temporary folder).
    """
    if method not in CALIBRATION_METHODS:
        raise UserError(f"quantize.onnx_calibration.method is {method!r}; choose one of "
                        f"{sorted(CALIBRATION_METHODS)}")
    if not 50.0 < percentile <= 100.0:
        raise UserError(f"quantize.onnx_calibration.percentile is {percentile}; "
                        "give a value in (50, 100], e.g. 99.99")
    name, size = onnx_input(Path(fp32_path))
    cal = check_calibration(calibration, size)
    with tempfile.TemporaryDirectory(prefix="quant_", dir=work_dir) as tmp:
        # Shape inference + graph cleanup first, as onnxruntime recommends for quantize_static.
        prep = Path(tmp) / "prep.onnx"
        quant_pre_process(str(fp32_path), str(prep), skip_symbolic_shape=True)
        with atomic_path(out_path) as out:
            quantize_static(str(prep), str(out), ArrayReader(name, cal),
                            quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CALIBRATION_METHODS[method],
                            extra_options={"CalibPercentile": float(percentile)})
            model = onnx.load(str(out))
            shift_int8_to_uint8(model)
            onnx.save(model, str(out))
    return Path(out_path)


def shift_int8_to_uint8(model: onnx.ModelProto) -> None:
    """Rewrite an int8 QDQ graph as uint8 in place: every int8 tensor q becomes q + 128 and
    every int8 zero point z becomes z + 128, so each DequantizeLinear gives the same values
    and each QuantizeLinear saturates at the same real bounds (see the module doc)."""
    graph = model.graph
    for init in graph.initializer:
        if init.data_type == TensorProto.INT8:
            shifted = numpy_helper.to_array(init).astype(np.int16) + 128
            init.CopyFrom(numpy_helper.from_array(shifted.astype(np.uint8), init.name))
    for node in graph.node:
        if node.op_type == "Constant" and any(a.name == "value" and a.t.data_type ==
                                              TensorProto.INT8 for a in node.attribute):
            raise RuntimeError(f"int8 Constant node {node.name} in the quantized graph; expected "
                               "zero points and weights as initializers")
    for info in (*graph.value_info, *graph.input, *graph.output):
        if info.type.tensor_type.elem_type == TensorProto.INT8:
            info.type.tensor_type.elem_type = TensorProto.UINT8
