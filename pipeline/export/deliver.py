"""Deliver a trained network to the board: every exported file, parity with the torch model,
the TFLite Micro check and the edge report, from one call.

`deliver` takes plain arguments (the network, its calibration and parity images) and returns
a `Delivery`; the quantize stage, the benchmarks and tests all call it. Everything it writes
depends only on its inputs (no timings, hosts or commits), so the same inputs give the same
bytes; `host_latency` measures a delivered file separately, for metrics.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.data.images import read_gray8
from pipeline.evaluate.inference import Predictor, host_latency_ms, load_predictor
from pipeline.export.c_array import write_c_array
from pipeline.export.manifest import edge_report
from pipeline.export.onnx_export import export_onnx, onnx_logits
from pipeline.export.output_code import (
    OutputCode,
    c_decoder,
    check_output_span,
    decoder,
    edge_network,
)
from pipeline.export.parity import check_gates, parity_table
from pipeline.export.quantize import quantize_onnx_int8
from pipeline.export.tflite import INT16X8_NAME, convert_tflite, tflite_io, tflite_predict
from pipeline.export.tflm import tflm_check
from pipeline.files import scratch_dir, temporary_files_in, write_json
from pipeline.models.backbones import count_macs
from pipeline.models.preprocess import Preprocess

Items = list[tuple[str, int]]
INT16X8_FILES = (INT16X8_NAME, "model_int16x8.cc", "model_int16x8.h")
BASE_FILES = ("model.onnx", "model_dynamic.onnx", "model_int8.onnx", "model_int8.tflite",
              "model_float.tflite", "model_int8.cc", "model_int8.h", "parity.json")
_TFLM_CHECK_IMAGES = 8


@dataclass(frozen=True)
class DeliveryOptions:
    """How to build the integer models (the quantize config, minus data selection).

    gates fail the delivery (broken models); goals are the edge targets, reported as met or
    missed. Both map `<format selector>_<metric>` to a bound (pipeline.export.parity).
    output_code: {"enabled", "logit_step", "margin"} (pipeline.export.output_code)."""

    per_channel: bool = True
    int16x8: bool = True
    output_code: Mapping = field(default_factory=lambda: {"enabled": False})
    onnx_calibration: Mapping = field(default_factory=lambda: {"method": "minmax",
                                                               "percentile": 99.9})
    outlier_factor: float = 4.0
    gates: Mapping = field(default_factory=dict)
    goals: Mapping = field(default_factory=dict)

    @classmethod
    def from_config(cls, q: Mapping) -> DeliveryOptions:
        return cls(per_channel=q["per_channel"], int16x8=q["int16x8"],
                   output_code=dict(q["output_code"]), onnx_calibration=dict(q["onnx_calibration"]),
                   outlier_factor=q["calibration_outlier_factor"], gates=dict(q["gates"]),
                   goals=dict(q["goals"]))


@dataclass
class Delivery:
    out_dir: Path
    files: list[Path]
    tflite: dict[str, Path]  # "int8", "float"[, "int16x8"]
    code: OutputCode | None
    io: dict[str, dict]  # per integer TFLite kind: input/output tensor specs
    tflm: dict[str, dict]
    edge: dict[str, dict]  # per integer TFLite kind: manifest.edge_report
    parity: dict  # {"table", "gates", "failures", "goals", "goals_missed"}
    calibration: dict  # {"images", "dropped_outliers"}
    class_names: list[str]
    pp: Preprocess

    def predictor(self, kind: str = "int8") -> Predictor:
        """A predictor for one delivered TFLite model (probabilities, code decoded)."""
        return load_predictor(self.tflite[kind], (self.class_names, self.pp, self.code))

    def host_latency(self) -> dict[str, dict]:
        """Batch-1 host latency of each integer TFLite model (measured now, not stored)."""
        return {kind: host_latency_ms(self.predictor(kind), self.pp.image_size)
                for kind in self.edge}

    def manifest_fields(self) -> dict:
        """What the manifest records about the build (the stage adds provenance)."""
        fields = {
            "input_spec": self.io["int8"],
            "output_code": self.code.to_dict() if self.code is not None else None,
            "parity": self.parity, "tflm": self.tflm["int8"], "edge": self.edge["int8"],
            "int16x8": ({"input_spec": self.io["int16x8"], "tflm": self.tflm["int16x8"],
                         "edge": self.edge["int16x8"]} if "int16x8" in self.tflite else None),
        }
        return fields


def deliver(net: nn.Module, pp: Preprocess, class_names: Sequence[str], out_dir: Path,
            calibration: np.ndarray, parity_images: np.ndarray, parity_labels: Sequence[int],
            options: DeliveryOptions, metadata: Mapping[str, str] | None = None) -> Delivery:
    """Export `net` (eval mode, [0, 1] input at pp.image_size) into `out_dir`.

    calibration: float32 (N, 1, S, S) train/val images, never test; images whose largest
    |logit| exceeds `options.outlier_factor` times the median are dropped first (MinMax takes
    the range of the single most extreme image). parity_images/labels: the fixed sample on
    which every format is compared with the torch model.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    net = net.eval()
    metadata = dict(metadata or {})
    onnx_fp32 = export_onnx(net, pp.image_size, out_dir / "model.onnx", metadata=metadata)
    export_onnx(net, pp.image_size, out_dir / "model_dynamic.onnx", dynamic_batch=True,
                metadata=metadata)
    calibration, dropped = _screen_outliers(net, calibration, options.outlier_factor)
    code_cfg = options.output_code
    step = code_cfg.get("logit_step") if code_cfg.get("enabled") else None
    edge_net, code = edge_network(net, calibration, step, code_cfg.get("margin", 0.25))
    with scratch_dir(out_dir) as work, temporary_files_in(work):
        # The integer models share one source: the fp32 net, with the coded output if any.
        edge_onnx = onnx_fp32 if code is None else export_onnx(
            edge_net, pp.image_size, work / "model_edge.onnx",
            metadata={**metadata, "output_code": json.dumps(code.to_dict())})
        onnx_int8 = quantize_onnx_int8(edge_onnx, out_dir / "model_int8.onnx", calibration,
                                       per_channel=options.per_channel,
                                       method=options.onnx_calibration["method"],
                                       percentile=options.onnx_calibration["percentile"],
                                       work_dir=work)
        tflite = convert_tflite(edge_onnx, out_dir, calibration, per_channel=options.per_channel,
                                int16x8=options.int16x8, work_dir=work)
    if not options.int16x8:  # no stale 16x8 files from an earlier delivery beside the new ones
        for name in INT16X8_FILES:
            (out_dir / name).unlink(missing_ok=True)
    integer_kinds = [k for k in ("int8", "int16x8") if k in tflite]
    io = {kind: tflite_io(tflite[kind]) for kind in integer_kinds}
    if code is not None:
        for kind in integer_kinds:
            check_output_span(io[kind]["output"], tflite[kind])
    tflm = {kind: tflm_check(tflite[kind], parity_images[:_TFLM_CHECK_IMAGES])
            for kind in integer_kinds}

    decode = decoder(code)
    with torch.no_grad():
        reference = net(torch.from_numpy(parity_images)).numpy()
    # TFLite through its reference kernels: what TFLM computes on the board, on any host CPU.
    candidates = {"onnx_fp32": onnx_logits(onnx_fp32, parity_images),
                  "onnx_int8": decode(onnx_logits(onnx_int8, parity_images))}
    for kind in ("float", *integer_kinds):
        candidates[f"tflite_{kind}"] = decode(tflite_predict(tflite[kind], parity_images,
                                                             reference=True))
    table = parity_table(reference, candidates, np.asarray(parity_labels))
    selected = {name: {k: v for k, v in bounds.items() if options.int16x8 or "int16x8" not in k}
                for name, bounds in (("gates", options.gates), ("goals", options.goals))}
    parity = {"table": table, **selected, "failures": check_gates(table, selected["gates"]),
              "goals_missed": check_gates(table, selected["goals"])}
    write_json(out_dir / "parity.json", parity)

    macs = count_macs(edge_net, (1, 1, pp.image_size, pp.image_size))
    edge = {}
    for kind in integer_kinds:
        symbol = "g_model" if kind == "int8" else f"g_model_{kind}"
        write_c_array(tflite[kind], out_dir / f"model_{kind}.cc", out_dir / f"model_{kind}.h",
                      symbol, c_decoder(code, symbol, io[kind]["output"]) if code else "")
        edge[kind] = edge_report(tflite[kind], tflm[kind]["arena_bytes"], macs,
                                 activations="int16" if kind == "int16x8" else "int8")
    files = [out_dir / n for n in BASE_FILES]
    if "int16x8" in tflite:
        files += [out_dir / n for n in INT16X8_FILES]
    return Delivery(out_dir, files, tflite, code, io, tflm, edge, parity,
                    {"images": len(calibration), "dropped_outliers": dropped},
                    list(class_names), pp)


def pick_samples(real_train: Items, synthetic_trainval: Items, test: Items, q: Mapping
                 ) -> tuple[Items, Items]:
    """(calibration items, parity items). Calibration: train/val images only, never test; the
    real train images and the synthetic train/val ones in equal shares, q["calibration_images"]
    in all. Parity: a fixed sample of q["parity_images"] test items. Separate random streams
    of q["seed"], so the parity sample does not move when the calibration size changes."""
    cal_rng, parity_rng = (np.random.default_rng([q["seed"], i]) for i in (0, 1))
    pools = [pool for pool in (real_train, synthetic_trainval) if pool]
    per_pool = max(1, q["calibration_images"] // max(1, len(pools)))
    calibration: Items = []
    for pool in pools:
        idx = cal_rng.choice(len(pool), min(per_pool, len(pool)), replace=False)
        calibration += [pool[i] for i in sorted(idx.tolist())]
    pick = parity_rng.choice(len(test), min(q["parity_images"], len(test)), replace=False)
    return calibration, [test[i] for i in sorted(pick.tolist())]


def image_batch(paths: Sequence[str | Path], pp: Preprocess) -> np.ndarray:
    """float32 (N, 1, S, S) model inputs for image files, through the model's Preprocess."""
    return np.stack([pp(read_gray8(Path(p))) for p in paths]).astype(np.float32)


def _screen_outliers(net: nn.Module, calibration: np.ndarray, factor: float
                     ) -> tuple[np.ndarray, int]:
    with torch.no_grad():
        peak = net(torch.from_numpy(calibration)).abs().amax(1).numpy()
    keep = peak <= factor * np.median(peak)
    return calibration[keep], int((~keep).sum())
