"""Where int8 loses agreement with fp32: the delivered ONNX model quantized by onnxruntime at
8 or 16 bits for activations and weights, each scored against the torch model.

Usage (from the repo root, after `dvc repro quantize@phase1`):
    python bench/bench_int8_precision.py               # phase1
    python bench/bench_int8_precision.py --phase phase3
Calibration and parity images are the quantize stage's own (pick_samples, same seeds). If
16-bit activations recover the agreement and 16-bit weights do not, the activations' ranges
are the problem (a model question, not a calibration one).

A second table scores the delivered artifacts (model_int8.onnx, model_int8.tflite and
model_int16x8.tflite when built) on every image of every split (TFLite with its optimized host kernels): the parity sample is a few
hundred images, where one flip moves agreement by 0.2-0.3 points; the SQNR over thousands of
images is the steadier signal. Train and val hold the calibration images, so their rows are
slightly optimistic. It also counts how many int8 flips are ties in the int8 output (two classes
given the same int8 value, argmax taking the first): those come from the output step alone,
which no change to the inner activations' ranges can remove.
"""

from __future__ import annotations

import argparse
import json
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

from pipeline import layout  # noqa: E402
from pipeline.config import find_root, load_params  # noqa: E402
from pipeline.data.real import read_real_data  # noqa: E402
from pipeline.data.split import phase_items  # noqa: E402
from pipeline.export.deliver import image_batch, pick_samples  # noqa: E402
from pipeline.export.onnx_export import export_onnx, onnx_logits  # noqa: E402
from pipeline.export.output_code import OutputCode, coded_net, decoder  # noqa: E402
from pipeline.export.parity import parity_table  # noqa: E402
from pipeline.export.quantize import ArrayReader, onnx_input  # noqa: E402
from pipeline.export.tflite import INT8_NAME, INT16X8_NAME, tflite_io, tflite_predict  # noqa: E402
from pipeline.models.classifier import load_classifier  # noqa: E402
from pipeline.stages.common import load_splits  # noqa: E402
from pipeline.taxonomy import Taxonomy  # noqa: E402

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
    cfg = load_params(root)
    model = load_classifier(root / layout.phase_model(phase) / layout.CHECKPOINT)
    classes = list(model.hparams.class_names)
    taxonomy = Taxonomy.from_config(cfg["taxonomy"])
    splits = {k: phase_items(v, root, taxonomy, cfg["phases"][phase]["taxonomy"])
              for k, v in load_splits(root).items()}
    real = read_real_data(root / layout.phase_model(phase) / layout.REAL_DATA, classes)
    cal_items, sample_items = pick_samples(real.train, splits["train"] + splits["val"],
                                           splits["test"], cfg["quantize"])
    cal = image_batch([p for p, _ in cal_items], model.pp)
    sample = image_batch([p for p, _ in sample_items], model.pp)
    with torch.no_grad():
        ref = model.net(torch.from_numpy(sample)).numpy()
    folder = root / layout.artifacts(phase)
    code = delivered_output_code(folder)
    print(f"{phase}: {model.hparams.backbone}, {len(cal)} calibration and {len(sample)} test "
          "images, onnxruntime static QDQ, per-channel weights, output "
          f"{'code ' + str(code) if code else 'plain int8 logits'}")
    print("| activations / weights | top-1 agreement | logit SQNR (dB) |\n|---|---|---|")
    decode = decoder(code)
    with tempfile.TemporaryDirectory() as tmp_str:
        # The integer models' source: the fp32 network with the delivered output code.
        fp32 = folder / "model.onnx" if code is None else export_onnx(
            coded_net(model.net, code, model.pp.image_size), model.pp.image_size,
            Path(tmp_str) / "edge.onnx", metadata={})
        name, _ = onnx_input(fp32)
        prep = Path(tmp_str) / "prep.onnx"
        quant_pre_process(str(fp32), str(prep), skip_symbolic_shape=True)
        for label, (act, weight, method) in VARIANTS.items():
            out = Path(tmp_str) / "q.onnx"
            wide = QuantType.QInt16 in (act, weight)
            quantize_static(str(prep), str(out), ArrayReader(name, cal),
                            quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=act, weight_type=weight, calibrate_method=method,
                            extra_options={"CalibPercentile": 99.9,
                                           "UseQDQContribOps": wide})
            logits = decode(onnx_logits(out, sample))
            agree, sqnr = _agreement_and_sqnr(ref, logits)
            print(f"| {label} | {100 * agree:.1f} % | {sqnr:.1f} |", flush=True)
    _delivered_on_every_split(root, folder, model, splits, code)


def delivered_output_code(folder: Path) -> OutputCode | None:
    """The output code the quantize stage recorded in the folder's manifest, if any."""
    manifest = json.loads((folder / layout.MANIFEST).read_text())
    code = manifest.get("output_code")
    return OutputCode.from_dict(code, str(folder / "manifest.json")) if code else None


def _agreement_and_sqnr(ref: np.ndarray, logits: np.ndarray) -> tuple[float, float]:
    agree = float((logits.argmax(1) == ref.argmax(1)).mean())
    return agree, float(10 * np.log10((ref ** 2).mean() / ((logits - ref) ** 2).mean()))


def _delivered_on_every_split(root: Path, folder: Path, model, splits: dict,
                              code: OutputCode | None) -> None:
    print(f"\nDelivered artifacts ({folder}) against torch fp32, every split image:")
    wide = folder / INT16X8_NAME  # the 16x8 model, when quantize.int16x8 built it
    decode = decoder(code)
    step = code.logit_step if code else tflite_io(folder / INT8_NAME)["output"]["scale"]
    print(f"TFLite int8 output step: {step:.4f} logits (classes closer than this can tie)")
    print("| split | images | ONNX int8 agreement | TFLite int8 agreement | TFLite int8 SQNR (dB)"
          " | TFLite int8 flips / of which output ties | TFLite 16x8 agreement"
          " | TFLite 16x8 SQNR (dB) | near ties (fp32 top-2 margin < 0.05)"
          " |\n|---|---|---|---|---|---|---|---|---|")
    refs, tflites, wides = [], [], []
    for split in ("train", "val", "test", "heldout"):
        images = image_batch([p for p, _ in splits[split]], model.pp)
        with torch.no_grad():
            ref = model.net(torch.from_numpy(images)).numpy()
        onnx_int8 = decode(onnx_logits(folder / "model_int8.onnx", images))
        onnx_agree, _ = _agreement_and_sqnr(ref, onnx_int8)
        tflite = decode(tflite_predict(folder / INT8_NAME, images))
        wide_logits = decode(tflite_predict(wide, images)) if wide.is_file() else None
        wide_cells = _cells(ref, wide_logits)
        top2 = np.sort(ref, axis=1)[:, -2:]
        ties = float((top2[:, 1] - top2[:, 0] < 0.05).mean())
        print(f"| {split} | {len(images)} | {100 * onnx_agree:.2f} % | {_cells(ref, tflite)} | "
              f"{_flips(ref, tflite)} | {wide_cells} | {100 * ties:.1f} % |", flush=True)
        refs.append(ref)
        tflites.append(tflite)
        wides.append(wide_logits)
    ref = np.concatenate(refs)
    wide_all = np.concatenate(wides) if wide.is_file() else None
    tflite_all = np.concatenate(tflites)
    print(f"| all | {len(ref)} | | {_cells(ref, tflite_all)} | {_flips(ref, tflite_all)} | "
          f"{_cells(ref, wide_all)} | |")


def _flips(ref: np.ndarray, logits: np.ndarray) -> str:
    """'disagreements / of which the int8 output tied the top class' (parity_table's terms)."""
    row = parity_table(ref, {"int8": logits}, ref.argmax(1))["int8"]
    n = len(ref)
    return f"{round((1 - row['top1_agreement']) * n)} / {round(row['disagreements_at_ties'] * n)}"


def _cells(ref: np.ndarray, logits: np.ndarray | None) -> str:
    """'agreement | SQNR' table cells, or blanks when the model was not built."""
    if logits is None:
        return "- | -"
    agree, sqnr = _agreement_and_sqnr(ref, logits)
    return f"{100 * agree:.2f} % | {sqnr:.2f}"


if __name__ == "__main__":
    main()
