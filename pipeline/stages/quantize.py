"""quantize@<phase>: the phase's delivered model as ONNX fp32 (static batch 1 and dynamic),
ONNX int8, TFLite int8 (int8 in/out) and float, optionally TFLite 16x8 (int16 activations),
checked on TFLite Micro, as C arrays, with parity gates against the torch model and a manifest
that says exactly what was built. The integer and TFLite models end in the output code
(pipeline.export.output_code) unless quantize.output_code.logit_step is null."""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import torch

from pipeline.config import params_hash
from pipeline.data.images import read_gray8
from pipeline.errors import UserError
from pipeline.evaluate.inference import host_latency_ms, load_predictor
from pipeline.evaluate.ood import calibrate_threshold
from pipeline.export.c_array import write_c_array
from pipeline.export.manifest import build_manifest, edge_report
from pipeline.export.onnx_export import OPSET, export_onnx
from pipeline.export.output_code import c_decoder, check_output_span, decoder, edge_network
from pipeline.export.parity import check_gates, parity_table
from pipeline.export.quantize import quantize_onnx_int8
from pipeline.export.tflite import INT16X8_NAME, convert_tflite, tflite_io, tflite_predict
from pipeline.export.tflm import tflm_check
from pipeline.files import sha256_file, write_json
from pipeline.models.backbones import count_macs
from pipeline.models.classifier import SEMClassifier
from pipeline.stages.common import load_splits
from pipeline.stages.finetune_real import out_dir as model_dir
from pipeline.taxonomy import Taxonomy
from pipeline.tracking import StageRun, git_commit
from pipeline.training import phase_items, predict_probs

log = logging.getLogger(__name__)
INT16X8_FILES = (INT16X8_NAME, "model_int16x8.cc", "model_int16x8.h")
CONVERTERS = ("torch", "onnx", "onnxruntime", "tensorflow-cpu", "onnx2tf", "tflite-micro")


def artifacts_dir(phase: str) -> Path:
    return Path("artifacts") / phase


def run(cfg: dict, root: Path, phase: str) -> None:
    q = cfg["quantize"]
    if phase not in cfg["finetune"]["phases"]:
        raise UserError(f"{phase} delivers no model of its own (finetune.phases = "
                        f"{cfg['finetune']['phases']}); phase 2 judges phase 1's artifacts")
    ckpt = root / model_dir(phase) / "model.ckpt"
    if not ckpt.is_file():
        raise UserError(f"{ckpt} is missing; run finetune_real@{phase} first (dvc repro)")
    out = root / artifacts_dir(phase)
    taxonomy = Taxonomy.from_config(cfg["taxonomy"])
    tax_phase = cfg["phases"][phase]["taxonomy"]
    with StageRun(root, cfg, "quantize", phase=phase) as tracker:
        tracker.log_params({"quantize": q})
        model = SEMClassifier.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
        model.eval()
        classes = list(model.hparams.class_names)
        pp = model.pp
        metadata = {"class_names": json.dumps(classes), "phase": phase,
                    "preprocess": json.dumps(pp.to_dict()), "source_checkpoint_sha256":
                    sha256_file(ckpt), "backbone": model.hparams.backbone}
        onnx_fp32 = export_onnx(model.net, pp.image_size, out / "model.onnx", metadata=metadata)
        export_onnx(model.net, pp.image_size, out / "model_dynamic.onnx", dynamic_batch=True,
                    metadata=metadata)

        splits = load_splits(root)
        cal_paths, sample_rows = calibration_and_parity_rows(root, phase, splits, q)
        calibration = _batch(cal_paths, pp)
        calibration, dropped = _screen_outliers(model, calibration, q["calibration_outlier_factor"])
        if len(calibration) < q["warn_below"]:
            log.warning("only %d calibration images (< %d): int8 ranges may be poor",
                        len(calibration), q["warn_below"])
        edge_net, code = edge_network(model.net, calibration, **q["output_code"])
        onnx_cal = q["onnx_calibration"]
        with tempfile.TemporaryDirectory(prefix="edge_") as tmp:
            # The integer models share one source: the fp32 net with the coded output layer.
            edge_onnx = onnx_fp32 if code is None else export_onnx(
                edge_net, pp.image_size, Path(tmp) / "model_edge.onnx",
                metadata={**metadata, "output_code": json.dumps(code.to_dict())})
            onnx_int8 = quantize_onnx_int8(edge_onnx, out / "model_int8.onnx", calibration,
                                           per_channel=q["per_channel"],
                                           method=onnx_cal["method"],
                                           percentile=onnx_cal["percentile"])
            tflite = convert_tflite(edge_onnx, out, calibration, per_channel=q["per_channel"],
                                    int16x8=q["int16x8"])
        io = {kind: tflite_io(tflite[kind]) for kind in ("int8", "int16x8") if kind in tflite}
        if code is not None:
            for kind, spec in io.items():
                check_output_span(spec["output"], tflite[kind])
        decode = decoder(code)
        if not q["int16x8"]:  # no stale 16x8 files from an earlier run beside the new ones
            for name in INT16X8_FILES:
                (out / name).unlink(missing_ok=True)

        sample = _batch([root / r["path"] for r in sample_rows], pp)
        labels = np.array([classes.index(taxonomy.map_fine(r["fine_class"], tax_phase))
                           for r in sample_rows])
        tflm = {kind: tflm_check(tflite[kind], sample[:8]) for kind in ("int8", "int16x8")
                if kind in tflite}

        with torch.no_grad():
            reference = model.net(torch.from_numpy(sample)).numpy()
        candidates = {
            "onnx_fp32": _onnx_logits(onnx_fp32, sample),
            "onnx_int8": decode(_onnx_logits(onnx_int8, sample)),
            "tflite_float": decode(tflite_predict(tflite["float"], sample)),
            "tflite_int8": decode(tflite_predict(tflite["int8"], sample)),
        }
        if "int16x8" in tflite:
            candidates["tflite_int16x8"] = decode(tflite_predict(tflite["int16x8"], sample))
        table = parity_table(reference, candidates, labels)
        # The 16x8 gates only apply when that model is built.
        gates = {k: v for k, v in q["gates"].items() if q["int16x8"] or "int16x8" not in k}
        failures = check_gates(table, gates)
        write_json(out / "parity.json", {"table": table, "gates": gates, "failures": failures})
        tracker.log_artifact(out / "parity.json", "parity")
        tracker.log_metrics({f"parity/{fmt}/{k}": v for fmt, row in table.items()
                             for k, v in row.items() if isinstance(v, int | float)})

        macs = count_macs(edge_net, (1, 1, pp.image_size, pp.image_size))
        edges = {}
        for kind in tflm:
            symbol = "g_model" if kind == "int8" else f"g_model_{kind}"
            write_c_array(tflite[kind], out / f"model_{kind}.cc", out / f"model_{kind}.h", symbol,
                          c_decoder(code, symbol, io[kind]["output"]) if code
                          else "")
            latency = host_latency_ms(load_predictor(tflite[kind], (classes, pp, code)),
                                      pp.image_size)
            edges[kind] = edge_report(tflite[kind], tflm[kind]["arena_bytes"], macs,
                                      latency["median_ms"], latency["host"],
                                      activations="int16" if kind == "int16x8" else "int8")
        edge = edges["int8"]
        val_items = _val_probs(model, root, phase, splits, taxonomy, tax_phase)
        files = [out / n for n in ("model.onnx", "model_dynamic.onnx", "model_int8.onnx",
                                   "model_int8.tflite", "model_float.tflite", "model_int8.cc",
                                   "model_int8.h", "parity.json")]
        if "int16x8" in tflite:
            files += [out / n for n in INT16X8_FILES]
        manifest = build_manifest(
            files, phase=phase, class_names=classes, label_map={i: c for i, c in enumerate(classes)},
            preprocess=pp.to_dict(), source_checkpoint=str(model_dir(phase) / "model.ckpt"),
            source_checkpoint_sha256=metadata["source_checkpoint_sha256"],
            git_commit=git_commit(root), params_hash=params_hash(cfg), onnx_opset=OPSET,
            converters={name: _version(name) for name in CONVERTERS},
            input_spec=io["int8"],
            output_code=code.to_dict() if code is not None else None,
            quantization={"scheme": "per-channel" if q["per_channel"] else "per-tensor",
                          "onnx": {"tool": "onnxruntime static QDQ", "calibration": dict(onnx_cal)},
                          "tflite": "onnx2tf full int8 (int8 input and output)",
                          "tflite_int16x8": "onnx2tf 16x8: int8 weights, int16 activations, "
                                            "input and output" if "int16x8" in tflite else None},
            calibration={"images": len(calibration), "dropped_outliers": dropped,
                         "sha256": _hash_list([sha256_file(p) for p in cal_paths])},
            parity={"table": table, "gates": gates, "failures": failures},
            tflm=tflm["int8"], edge=edge,
            int16x8={"input_spec": io["int16x8"], "tflm": tflm["int16x8"],
                     "edge": edges["int16x8"]} if "int16x8" in tflite else None,
            ood_threshold=calibrate_threshold(val_items) if len(val_items) else None,
        )
        write_json(out / "manifest.json", manifest)
        tracker.log_artifacts(out, "artifacts")
        tracker.log_metrics({f"edge/{k}": float(v) for k, v in edge.items()
                             if isinstance(v, int | float)})
        tracker.register_model(f"sem-defect-{phase}", "artifacts/model.onnx")
        log.info("quantize@%s: flash %d B, arena %d B, parity %s", phase, edge["flash_bytes"],
                 edge["arena_bytes"], {k: round(v.get("top1_agreement", 1.0), 4)
                                       for k, v in table.items() if k != "reference"})
        if failures:
            raise UserError(f"parity gates failed for {phase}: {'; '.join(failures)} "
                            f"(table in {artifacts_dir(phase) / 'parity.json'})")


def calibration_and_parity_rows(root: Path, phase: str, splits: dict, q: dict
                                ) -> tuple[list[Path], list[dict]]:
    """The calibration image paths and the fixed parity sample of test rows for a phase."""
    # Separate streams: the parity sample must not move when the calibration size changes.
    cal_rng, parity_rng = (np.random.default_rng([q["seed"], i]) for i in (0, 1))
    cal_paths = _calibration_paths(root, phase, splits, q["calibration_images"], cal_rng)
    test_rows = splits["test"]
    pick = sorted(parity_rng.choice(len(test_rows), min(q["parity_images"], len(test_rows)),
                                    replace=False).tolist())
    return cal_paths, [test_rows[i] for i in pick]


def _calibration_paths(root: Path, phase: str, splits: dict, n: int, rng) -> list[Path]:
    """Train/val images only (never test): the phase's real train images when it has them,
    plus synthetic train/val, in equal shares."""
    synthetic = [root / r["path"] for r in splits["train"] + splits["val"]]
    real_report = root / model_dir(phase) / "real_data.json"
    real = []
    if real_report.is_file():
        data = json.loads(real_report.read_text())
        real = [Path(p) for p, _, _ in data.get("train_files", [])]
    pools = [p for p in (real, synthetic) if p]
    per_pool = max(1, n // len(pools))
    chosen: list[Path] = []
    for pool in pools:
        idx = rng.choice(len(pool), min(per_pool, len(pool)), replace=False)
        chosen += [pool[i] for i in sorted(idx.tolist())]
    return chosen


def _batch(paths, pp) -> np.ndarray:
    return np.stack([pp(read_gray8(Path(p))) for p in paths]).astype(np.float32)


def _screen_outliers(model, calibration: np.ndarray, factor: float) -> tuple[np.ndarray, int]:
    with torch.no_grad():
        peak = model.net(torch.from_numpy(calibration)).abs().amax(1).numpy()
    keep = peak <= factor * np.median(peak)
    return calibration[keep], int((~keep).sum())


def _onnx_logits(path: Path, images: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: images[i: i + 1]})[0]
                           for i in range(len(images))])


def _val_probs(model, root, phase, splits, taxonomy, tax_phase) -> np.ndarray:
    """Validation probabilities for the OOD threshold: the phase's real val when it has one."""
    report = root / model_dir(phase) / "real_data.json"
    items = []
    if report.is_file():
        classes = list(model.hparams.class_names)
        items = [(p, classes.index(c)) for p, c, _ in json.loads(report.read_text()).get("val_files", [])]
    if not items:
        items = phase_items(splits["val"], root, taxonomy, tax_phase)
    return predict_probs(model, items)


def _hash_list(hashes: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(hashes)).encode()).hexdigest()


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "not installed"
