"""Where int8 loses agreement with fp32: the delivered ONNX model quantized by onnxruntime at
8 or 16 bits for activations and weights, each scored against the torch model.

Usage (from the repo root, after `dvc repro quantize@phase1`):
    python bench/bench_int8_precision.py               # phase1
    python bench/bench_int8_precision.py --phase phase3
Calibration and parity images are the quantize stage's own (same seeds, same sizes). If
16-bit activations recover the agreement and 16-bit weights do not, the activations' ranges
are the problem (a model question, not a calibration one).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from onnxruntime.quantization import (
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import find_root, load_params  # noqa: E402
from pipeline.export.quantize import _ArrayReader, onnx_input  # noqa: E402
from pipeline.models.classifier import SEMClassifier  # noqa: E402
from pipeline.stages.common import load_splits  # noqa: E402
from pipeline.stages.finetune_real import out_dir as model_dir  # noqa: E402
from pipeline.stages.quantize import (  # noqa: E402
    _batch,
    _onnx_logits,
    artifacts_dir,
    calibration_and_parity_rows,
)

# (activation type, weight type, calibration method)
VARIANTS = {
    "a8 w8 minmax": (QuantType.QInt8, QuantType.QInt8, CalibrationMethod.MinMax),
    "a8 w8 percentile 99.9": (QuantType.QInt8, QuantType.QInt8, CalibrationMethod.Percentile),
    "a16 w8 minmax": (QuantType.QInt16, QuantType.QInt8, CalibrationMethod.MinMax),
    "a8 w16 minmax": (QuantType.QInt8, QuantType.QInt16, CalibrationMethod.MinMax),
    "a16 w16 minmax": (QuantType.QInt16, QuantType.QInt16, CalibrationMethod.MinMax),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--phase", default="phase1")
    phase = parser.parse_args().phase
    root = find_root()
    q = load_params(root)["quantize"]
    model = SEMClassifier.load_from_checkpoint(root / model_dir(phase) / "model.ckpt",
                                               map_location="cpu", weights_only=True).eval()
    splits = load_splits(root)
    cal_paths, sample_rows = calibration_and_parity_rows(root, phase, splits, q)
    cal = _batch(cal_paths, model.pp)
    sample = _batch([root / r["path"] for r in sample_rows], model.pp)
    with torch.no_grad():
        ref = model.net(torch.from_numpy(sample)).numpy()
    fp32 = root / artifacts_dir(phase) / "model.onnx"
    name, _ = onnx_input(fp32)
    print(f"{phase}: {model.hparams.backbone}, {len(cal)} calibration and {len(sample)} test "
          "images, onnxruntime static QDQ, per-channel weights")
    print("| activations / weights | top-1 agreement | logit SQNR (dB) |\n|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp_str:
        prep = Path(tmp_str) / "prep.onnx"
        quant_pre_process(str(fp32), str(prep), skip_symbolic_shape=True)
        for label, (act, weight, method) in VARIANTS.items():
            out = Path(tmp_str) / "q.onnx"
            wide = QuantType.QInt16 in (act, weight)
            quantize_static(str(prep), str(out), _ArrayReader(name, cal),
                            quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=act, weight_type=weight, calibrate_method=method,
                            extra_options={"CalibPercentile": 99.9,
                                           "UseQDQContribOps": wide})
            logits = _onnx_logits(out, sample)
            agree = float((logits.argmax(1) == ref.argmax(1)).mean())
            sqnr = 10 * np.log10((ref ** 2).mean() / ((logits - ref) ** 2).mean())
            print(f"| {label} | {100 * agree:.1f} % | {sqnr:.1f} |", flush=True)


if __name__ == "__main__":
    main()
