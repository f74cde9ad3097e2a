"""TensorFlow Lite Micro check: does the model load, run and match TFLite, and how much arena.

The `tflite-micro` package runs the TFLM reference kernels on the host. TFLM reports a missing
kernel and its memory plan only through C-level stderr/stdout, so both are captured at the
file-descriptor level and parsed.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tflite_micro import runtime
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

from pipeline.errors import UserError
from pipeline.export.tflite import quantize_input, tflite_predict

_OP_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
_ARENA_RE = re.compile(r"Arena allocation total (\d+) bytes")
_MISSING_RE = re.compile(r"Didn't find op for builtin opcode '(\w+)'|"
                         r"Failed to get registration from op code (\w+)|"
                         r"Couldn't find custom op '?([\w.]+)'?")
_LIBC = ctypes.CDLL(None)
# Arena handed to TFLM on the host. Generous on purpose: the package's default (10x the model
# size) is too small for small models with large activations, and the figure we report is
# what TFLM actually allocates, not this capacity.
_HOST_ARENA_BYTES = 64 << 20


@contextlib.contextmanager
def _capture_c_output() -> Iterator[list[str]]:
    """Redirect fds 1 and 2 (C++ printf/stderr) to a temp file; the text lands in the list."""
    out: list[str] = []
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        try:
            os.dup2(tmp.fileno(), 1)
            os.dup2(tmp.fileno(), 2)
            yield out
        finally:
            _LIBC.fflush(None)  # C stdout is buffered when it is not a terminal
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            tmp.seek(0)
            out.append(tmp.read().decode("utf-8", errors="replace"))


def tflite_ops(tflite_path: Path) -> dict[str, list[str]]:
    """{"ops": sorted op names, "float_ops": ops with a float32 input} read from the flatbuffer.

    Custom ops appear as "CUSTOM:<name>" (e.g. Flex ops, which no microcontroller runs).
    """
    buf = Path(tflite_path).read_bytes()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(buf, 0))
    ops, float_ops = set(), set()
    for graph in model.subgraphs:
        for op in graph.operators or []:
            code = model.operatorCodes[op.opcodeIndex]
            builtin = runtime.get_builtin_code_from_operator_code(code)
            name = (f"CUSTOM:{code.customCode.decode()}" if builtin == schema.BuiltinOperator.CUSTOM
                    else _OP_NAMES.get(builtin, str(builtin)))
            ops.add(name)
            if any(i >= 0 and graph.tensors[i].type == schema.TensorType.FLOAT32
                   for i in op.inputs):
                float_ops.add(name)
    return {"ops": sorted(ops), "float_ops": sorted(float_ops)}


def tflm_check(tflite_path: Path, sample: np.ndarray) -> dict:
    """Run `sample` (N, 1, S, S) float [0, 1] through TFLM and compare with TFLite.

    Returns {"arena_bytes", "ops", "float_ops", "max_abs_diff_vs_tflite" (dequantized
    logits), "outputs_match" (raw outputs identical to TFLite's reference kernels),
    "max_diff_output_steps" (that difference in output quantization steps; None if float)}.
    Raises UserError naming the ops TFLM cannot run.
    """
    tflite_path = Path(tflite_path)
    ops = tflite_ops(tflite_path)
    with _capture_c_output() as log:
        try:
            interp = runtime.Interpreter.from_bytes(tflite_path.read_bytes(),
                                                    arena_size=_HOST_ARENA_BYTES)
        except RuntimeError:
            interp = None
    if interp is None:
        text = log[0] if log else ""
        missing = sorted({next(g for g in m.groups() if g) for m in _MISSING_RE.finditer(text)})
        custom = [op for op in ops["ops"] if op.startswith("CUSTOM:")]
        what = missing + [c for c in custom if c.split(":", 1)[1] not in missing]
        reason = (f"ops TFLM does not support: {', '.join(what)}" if what
                  else f"TFLM could not load it: {text.strip()[-500:]}")
        raise UserError(f"{tflite_path}: {reason} (model ops: {', '.join(ops['ops'])}); "
                        "replace those layers with supported ones before export")
    inp, out = interp.get_input_details(0), interp.get_output_details(0)
    x = np.asarray(sample, dtype=np.float32).transpose(0, 2, 3, 1)  # NCHW → NHWC
    in_q, out_q = inp["quantization_parameters"], out["quantization_parameters"]
    if np.issubdtype(inp["dtype"], np.integer):
        x = quantize_input(x, float(in_q["scales"][0]), int(in_q["zero_points"][0]),
                           dtype=inp["dtype"])
    raw, arena = [], None
    for i in range(len(x)):
        interp.set_input(x[i: i + 1], 0)
        interp.invoke()
        raw.append(np.array(interp.get_output(0)))
        if arena is None:  # the memory plan is fixed after the first invoke
            with _capture_c_output() as log:
                interp.print_allocations()
            found = _ARENA_RE.search(log[0])
            if not found:
                raise RuntimeError(f"no arena size in TFLM's allocation report: {log[0][:300]}")
            arena = int(found.group(1))
    y = np.concatenate(raw).astype(np.float32)
    step = None  # one output quantization step, for integer outputs
    if np.issubdtype(out["dtype"], np.integer):
        step = float(out_q["scales"][0])
        y = (y - int(out_q["zero_points"][0])) * step
    ref = tflite_predict(tflite_path, sample, reference=True)
    diff = float(np.abs(y - ref).max())
    # Float ops between int16 ones (MobileNetV3's HARD_SWISH) may round differently.
    return {"arena_bytes": arena, "ops": ops["ops"], "float_ops": ops["float_ops"],
            "max_abs_diff_vs_tflite": diff, "outputs_match": diff == 0.0,
            "max_diff_output_steps": None if step is None else round(diff / step)}
