"""ONNX fp32 → ONNX int8 (QDQ, static calibration: MinMax, percentile or entropy) with onnxruntime."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
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


class _ArrayReader(CalibrationDataReader):
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
                       percentile: float = 99.99) -> Path:
    """Static int8 QDQ quantization of `fp32_path`, calibrated on `calibration`.

    `calibration` is float32 (N, 1, S, S) in [0, 1], e.g. ~100+ train/val images. `method`
    picks how activation ranges are set: "minmax" (full observed range), "percentile" (clip at
    the `percentile`-th of |x|, so rare extremes do not coarsen every other value) or "entropy".
    """
    if method not in CALIBRATION_METHODS:
        raise UserError(f"quantize.onnx_calibration.method is {method!r}; choose one of "
                        f"{sorted(CALIBRATION_METHODS)}")
    if not 50.0 < percentile <= 100.0:
        raise UserError(f"quantize.onnx_calibration.percentile is {percentile}; "
                        "give a value in (50, 100], e.g. 99.99")
    name, size = onnx_input(Path(fp32_path))
    cal = check_calibration(calibration, size)
    with tempfile.TemporaryDirectory(prefix="quant_") as tmp:
        # Shape inference + graph cleanup first, as onnxruntime recommends for quantize_static.
        prep = Path(tmp) / "prep.onnx"
        quant_pre_process(str(fp32_path), str(prep), skip_symbolic_shape=True)
        with atomic_path(out_path) as out:
            quantize_static(str(prep), str(out), _ArrayReader(name, cal),
                            quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CALIBRATION_METHODS[method],
                            extra_options={"CalibPercentile": float(percentile)})
    return Path(out_path)
