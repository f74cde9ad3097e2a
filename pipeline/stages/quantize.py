"""quantize@<phase>: the phase's delivered model as ONNX fp32 (static batch 1 and dynamic),
ONNX int8, TFLite int8 (int8 in/out) and float, optionally TFLite 16x8 (int16 activations),
checked on TFLite Micro, as C arrays, with parity against the torch model and a manifest
that says exactly what was built (pipeline.export.deliver does the work)."""

from __future__ import annotations

import importlib.metadata as md
import json
import logging
from pathlib import Path

from pipeline import layout
from pipeline.config import params_hash
from pipeline.data.real import read_real_data
from pipeline.data.split import phase_items
from pipeline.errors import UserError
from pipeline.evaluate.ood import calibrate_threshold
from pipeline.export.deliver import DeliveryOptions, deliver, image_batch, pick_samples
from pipeline.export.manifest import build_manifest
from pipeline.export.onnx_export import OPSET
from pipeline.files import hash_list, sha256_file, write_json
from pipeline.models.classifier import load_classifier
from pipeline.stages.common import load_splits, log_images
from pipeline.taxonomy import Taxonomy
from pipeline.tracking import StageRun, git_commit
from pipeline.training import predict_probs

log = logging.getLogger(__name__)
CONVERTERS = ("torch", "onnx", "onnxruntime", "tensorflow-cpu", "onnx2tf", "tflite-micro")


def run(cfg: dict, root: Path, phase: str) -> None:
    q = _delivering(cfg, phase)
    ckpt = root / layout.phase_model(phase) / layout.CHECKPOINT
    model = load_classifier(ckpt, f"run finetune_real@{phase} first (dvc repro)")
    classes, pp = list(model.hparams.class_names), model.pp
    tax_phase = cfg["phases"][phase]["taxonomy"]
    splits = {k: phase_items(v, root, Taxonomy.from_config(cfg["taxonomy"]), tax_phase)
              for k, v in load_splits(root).items()}
    real = read_real_data(root / layout.phase_model(phase) / layout.REAL_DATA, classes)
    cal_items, parity_items = pick_samples(real.train, splits["train"] + splits["val"],
                                           splits["test"], q)
    if len(cal_items) < q["warn_below"]:
        log.warning("only %d calibration images (< %d): int8 ranges may be poor",
                    len(cal_items), q["warn_below"])
    with StageRun(root, cfg, "quantize", phase=phase) as tracker:
        tracker.log_params({"quantize": q})
        metadata = _onnx_metadata(model, phase, ckpt)
        delivery = deliver(model.net, pp, classes, root / layout.artifacts(phase),
                           image_batch([p for p, _ in cal_items], pp),
                           image_batch([p for p, _ in parity_items], pp),
                           [y for _, y in parity_items], DeliveryOptions.from_config(q), metadata)
        manifest = build_manifest(
            delivery.files, phase=phase, class_names=classes, label_map=dict(enumerate(classes)),
            preprocess=pp.to_dict(), source_checkpoint=str(ckpt.relative_to(root)),
            source_checkpoint_sha256=metadata["source_checkpoint_sha256"],
            params_hash=params_hash(_built_with(cfg, phase)), onnx_opset=OPSET,
            converters={name: _version(name) for name in CONVERTERS},
            quantization=_scheme(q, delivery), **delivery.manifest_fields(),
            calibration={**delivery.calibration, "sha256": hash_list(
                [sha256_file(p) for p, _ in cal_items])},
            ood_threshold=calibrate_threshold(predict_probs(model, real.val or splits["val"])))
        write_json(root / layout.artifacts(phase) / layout.MANIFEST, manifest)
        _report(tracker, root, phase, delivery, cal_items)
        _register(tracker, phase, delivery, manifest, real)
        if delivery.parity["failures"]:
            raise UserError(f"parity gates failed for {phase}: "
                            f"{'; '.join(delivery.parity['failures'])} (a broken export; table "
                            f"in {layout.artifacts(phase) / 'parity.json'})")


def _delivering(cfg: dict, phase: str) -> dict:
    """The quantize config, for a phase that delivers a model of its own."""
    if phase not in cfg["finetune"]["phases"]:
        raise UserError(f"{phase} delivers no model of its own (finetune.phases = "
                        f"{cfg['finetune']['phases']}); phase 2 judges phase 1's artifacts")
    return cfg["quantize"]


def _built_with(cfg: dict, phase: str) -> dict:
    """The params the artifacts depend on (dvc.yaml's params of this stage): tracking and
    the other stages' settings do not change a byte of them."""
    return {"quantize": cfg["quantize"], "phase": cfg["phases"][phase],
            "taxonomy": cfg["taxonomy"]["phases"]}


def _onnx_metadata(model, phase: str, ckpt: Path) -> dict[str, str]:
    """The contract stored inside the ONNX files (pipeline.evaluate.inference reads it)."""
    return {"class_names": json.dumps(list(model.hparams.class_names)), "phase": phase,
            "preprocess": json.dumps(model.pp.to_dict()),
            "source_checkpoint_sha256": sha256_file(ckpt), "backbone": model.hparams.backbone}


def _report(tracker: StageRun, root: Path, phase: str, delivery, calibration) -> None:
    """Headline figures and host timings to the metrics file and MLflow (not the artifacts),
    and the calibration images as the run's dataset."""
    log_images(tracker, "calibration", calibration, "real train + synthetic train/val",
               "calibration")
    table = delivery.parity["table"]
    metrics = {f"parity/{fmt}/{k}": v for fmt, row in table.items() if fmt != "reference"
               for k, v in row.items() if k in ("top1_agreement", "accuracy_delta")}
    metrics.update({f"edge/{kind}/{k}": float(v) for kind, edge in delivery.edge.items()
                    for k, v in edge.items() if k in ("flash_bytes", "arena_bytes",
                                                     "m7_latency_ms_estimate")})
    metrics.update({f"host_latency_ms/{kind}": round(lat["median_ms"], 3)
                    for kind, lat in delivery.host_latency().items()})
    metrics["goals_met"] = int(not delivery.parity["goals_missed"])
    write_json(root / layout.artifact_report(phase), metrics)
    tracker.log_metrics(metrics)
    tracker.set_tags({"git_commit": git_commit(root)})
    tracker.log_artifacts(delivery.out_dir, "artifacts")
    for missed in delivery.parity["goals_missed"]:
        log.warning("quantize@%s: edge goal missed: %s", phase, missed)
    log.info("quantize@%s: flash %d B, arena %d B, agreement %s", phase,
             delivery.edge["int8"]["flash_bytes"], delivery.edge["int8"]["arena_bytes"],
             {k: round(v["top1_agreement"], 4) for k, v in table.items() if k != "reference"})


def _register(tracker: StageRun, phase: str, delivery, manifest: dict, real) -> None:
    """The delivered files as an MLflow logged model, registered as the newest version of
    sem-defect-<phase> (alias <phase>), tagged with the digests of the data behind it."""
    size = delivery.pp.image_size
    out = delivery.out_dir
    model_id = tracker.log_model(
        f"sem-defect-{phase}", [out / n for n in ("model.onnx", "model_int8.onnx",
                                                  "model_int8.tflite", layout.MANIFEST)],
        signature={"inputs": [{"name": "image", "dtype": "float32", "shape": [1, 1, size, size],
                               "range": [0.0, 1.0], "tflite_int8": delivery.io["int8"]["input"]}],
                   "outputs": [{"name": "logits", "dtype": "float32",
                                "shape": [1, len(delivery.class_names)],
                                "tflite_int8": delivery.io["int8"]["output"]}]},
        label_map=manifest["label_map"], tags={"phase": phase})
    digests = {"source_checkpoint_sha256": manifest["source_checkpoint_sha256"],
               "calibration_sha256": manifest["calibration"]["sha256"],
               "real_train_sha256": hash_list([r["sha256"] for r in real.report.get(
                   "train_files", [])]) if real.is_real else "stand-in"}
    tracker.register_model(f"sem-defect-{phase}", model_id, alias=phase, tags=digests)


def _scheme(q: dict, delivery) -> dict:
    return {"scheme": "per-channel" if q["per_channel"] else "per-tensor",
            "onnx": {"tool": "onnxruntime static QDQ, stored as uint8 (U8U8)",
                     "calibration": dict(q["onnx_calibration"])},
            "tflite": "onnx2tf full int8 (int8 input and output)",
            "tflite_int16x8": "onnx2tf 16x8: int8 weights, int16 activations, input and output"
            if "int16x8" in delivery.tflite else None}


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "not installed"
