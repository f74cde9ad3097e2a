"""ONNX fp32 → TFLite (full-int8 and float) with onnx2tf, and TFLite inference on the host.

onnx2tf runs in a subprocess: it prints a lot, may call sys.exit, and imports TensorFlow,
which the rest of the pipeline does not need. Calibration images are passed explicitly with
`-cind` (without them onnx2tf downloads sample images). The int8 model takes int8 input with
scale 1/255 and zero point -128, i.e. a raw 8-bit pixel minus 128, because the network's first
layer is Normalize and calibration spans exactly [0, 1] (see `_pin_input_range`). The optional
16x8 model (int16 activations, int8 weights) takes int16 input round(pixel * 32767 / 255).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from pipeline.errors import UserError
from pipeline.export.quantize import check_calibration, onnx_input
from pipeline.files import write_bytes

INT8_NAME = "model_int8.tflite"
FLOAT_NAME = "model_float.tflite"
INT16X8_NAME = "model_int16x8.tflite"
# onnx2tf names its outputs after the input file: <stem>_full_integer_quant.tflite etc.
_ONNX2TF_OUTPUTS = {"int8": "model_full_integer_quant.tflite", "float": "model_float32.tflite",
                    "int16x8": "model_full_integer_quant_with_int16_act.tflite"}
_OUT_NAMES = {"int8": INT8_NAME, "float": FLOAT_NAME, "int16x8": INT16X8_NAME}
_LOG_TAIL_LINES = 40


def convert_tflite(onnx_path: Path, out_dir: Path, calibration: np.ndarray, *,
                   per_channel: bool = True, int16x8: bool = False,
                   work_dir: Path | None = None) -> dict[str, Path]:
    """Convert a static batch-1 ONNX model; return {"int8": path, "float": path} in `out_dir`.

    The int8 model is fully integer (int8 input and output); weights are quantized
    per-channel (default) or per-tensor. `calibration`: float32 (N, 1, S, S) in [0, 1].
    With `int16x8`, also "int16x8": the same int8 weights with 16-bit activations, input and
    output (TFLite's 16x8 mode, which onnx2tf builds beside the int8 model anyway).
    """
    kinds = ["int8", "float"] + (["int16x8"] if int16x8 else [])
    if importlib.util.find_spec("onnx2tf") is None:
        raise UserError("onnx2tf is not installed; install the export toolchain (see the "
                        "Makefile's setup step) to build TFLite models")
    input_name, size = onnx_input(Path(onnx_path))
    cal = _pin_input_range(check_calibration(calibration, size))
    with tempfile.TemporaryDirectory(prefix="onnx2tf_", dir=work_dir) as tmp_str:
        tmp = Path(tmp_str)
        # A private copy: onnx2tf may rewrite its input file in place.
        shutil.copyfile(onnx_path, tmp / "model.onnx")
        np.save(tmp / "calibration.npy", cal.transpose(0, 2, 3, 1))  # onnx2tf wants NHWC
        cmd = [sys.executable, "-m", "onnx2tf", "-i", "model.onnx", "-o", "out",
               "-oiqt", "-qt", "per-channel" if per_channel else "per-tensor",
               "-iqd", "int8", "-oqd", "int8",
               # Our exporter already folds constants; onnxsim is not part of the toolchain.
               "-nuo",
               # Calibration data is already the model input: mean 0, std 1 keeps it as is.
               "-cind", input_name, "calibration.npy", "[[[[0.0]]]]", "[[[[1.0]]]]"]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
        proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True,
                              check=False, preexec_fn=_die_with_parent)
        made = {kind: tmp / "out" / _ONNX2TF_OUTPUTS[kind] for kind in kinds}
        missing = [p.name for p in made.values() if not p.is_file()]
        if proc.returncode == 0 and missing == [_ONNX2TF_OUTPUTS["int16x8"]]:
            raise UserError(f"onnx2tf could not build the 16x8 model of {onnx_path} (some op "
                            "has no int16-activation kernel); set quantize.int16x8=false")
        if proc.returncode != 0 or missing:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-_LOG_TAIL_LINES:])
            raise RuntimeError(f"onnx2tf failed on {onnx_path} (exit {proc.returncode}, "
                               f"missing {missing}); last output:\n{tail}")
        out_dir = Path(out_dir)
        paths = {kind: out_dir / _OUT_NAMES[kind] for kind in kinds}
        for kind, path in paths.items():
            write_bytes(path, made[kind].read_bytes())
    _check_int8_io(paths["int8"])
    return paths


def _die_with_parent() -> None:
    """In the converter's process: get SIGKILL when the stage dies, so a killed stage leaves
    no orphan converter running (Linux prctl PR_SET_PDEATHSIG; elsewhere nothing)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)


def _pin_input_range(cal: np.ndarray) -> np.ndarray:
    """Set one pixel to 0 and one to 1 so the int8 input range is exactly [0, 1].

    The converter quantizes the input with the calibrated min/max; pinning them gives scale
    1/255 and zero point -128 whatever the images' own range, at the cost of two pixels.
    """
    cal = cal.copy()
    cal[0, 0, 0, 0], cal[0, 0, 0, -1] = 0.0, 1.0
    return cal


def _check_int8_io(path: Path) -> None:
    io = tflite_io(path)
    inp, out = io["input"], io["output"]
    if inp["dtype"] != "int8" or out["dtype"] != "int8":
        raise RuntimeError(f"{path}: expected int8 input and output, got {inp['dtype']} and "
                           f"{out['dtype']}")
    if inp["zero_point"] != -128 or not np.isclose(inp["scale"], 1 / 255, rtol=1e-4):
        raise RuntimeError(f"{path}: int8 input should be pixel - 128 (scale 1/255, zero point "
                           f"-128), got scale {inp['scale']} and zero point {inp['zero_point']}")


def load_interpreter(path: Path, *, reference: bool = False) -> Interpreter:
    # Reference kernels are what TFLM implements; the default ones are faster on a host.
    resolver = OpResolverType.BUILTIN_REF if reference else OpResolverType.BUILTIN
    it = Interpreter(model_path=str(path), experimental_op_resolver_type=resolver, num_threads=1)
    it.allocate_tensors()
    return it


def _tensor_info(detail: dict) -> dict:
    scale, zero_point = detail["quantization"]
    return {"name": detail["name"], "dtype": np.dtype(detail["dtype"]).name,
            "shape": [int(d) for d in detail["shape"]], "scale": float(scale),
            "zero_point": int(zero_point)}


def tflite_io(path: Path) -> dict:
    """{"input": {...}, "output": {...}}: name, dtype, shape, scale, zero_point of each."""
    it = load_interpreter(Path(path))
    return {"input": _tensor_info(it.get_input_details()[0]),
            "output": _tensor_info(it.get_output_details()[0])}


def quantize_input(images_nhwc: np.ndarray, scale: float, zero_point: int,
                   dtype: type = np.int8) -> np.ndarray:
    """Float [0, 1] images → the integer input a device feeds (int8: pixel - 128)."""
    info = np.iinfo(dtype)
    return np.clip(np.round(images_nhwc / scale) + zero_point, info.min, info.max).astype(dtype)


def interpreter_logits(it: Interpreter, images: np.ndarray) -> np.ndarray:
    """Float logits (N, C) from a loaded interpreter for images (N, 1, S, S) in [0, 1].

    Integer (int8 or int16) inputs are quantized and outputs dequantized with the model's
    own parameters.
    """
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    x = np.asarray(images, dtype=np.float32).transpose(0, 2, 3, 1)  # NCHW → NHWC
    if np.issubdtype(inp["dtype"], np.integer):
        x = quantize_input(x, *inp["quantization"], dtype=inp["dtype"])
    logits = []
    for i in range(len(x)):  # the model has a static batch of 1
        it.set_tensor(inp["index"], x[i: i + 1])
        it.invoke()
        logits.append(it.get_tensor(out["index"]).copy())
    y = np.concatenate(logits)
    if np.issubdtype(out["dtype"], np.integer):
        scale, zero_point = out["quantization"]
        y = (y.astype(np.float32) - zero_point) * scale
    return y.astype(np.float32)


def tflite_predict(tflite_path: Path, images: np.ndarray, *, reference: bool = False
                   ) -> np.ndarray:
    """Float logits (N, C) of a TFLite model for images (N, 1, S, S) in [0, 1].

    `reference=True` uses TFLite's reference kernels (the ones TFLM mirrors).
    """
    return interpreter_logits(load_interpreter(Path(tflite_path), reference=reference), images)
