"""evaluate@<phase>: score the phase's delivered models (torch fp32, ONNX fp32, ONNX int8,
TFLite int8) on every test set the phase has, and write DVC metrics, confusion records for
`dvc plots`, predictions, figures and a self-contained report.html.

Phase 2 trains nothing: it judges phase 1's files unchanged (resize only), mapping classes the
model lacks onto `phases.phase2.default_class`, and records the sha256 of every file judged.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pipeline import layout
from pipeline.data.images import read_gray8
from pipeline.data.importer import import_folder, load_unlabelled
from pipeline.data.real import STANDIN, read_real_data, standin_items
from pipeline.data.split import phase_items
from pipeline.errors import UserError
from pipeline.evaluate.folder import MappedPredictor, map_classes, predict_paths
from pipeline.evaluate.inference import host_latency_ms, host_name, load_predictor
from pipeline.evaluate.judge import judge
from pipeline.evaluate.metrics import confusion_records
from pipeline.evaluate.ood import flag_summary
from pipeline.evaluate.plots import confusion_figure, figure_png, save_figure
from pipeline.evaluate.report import write_report
from pipeline.evaluate.robustness import class_balanced, robustness_figure, robustness_table
from pipeline.evaluate.saliency import (
    MASK_TOLERANCE_PX,
    explain_images,
    looks_elsewhere,
    mask_localisation,
    overlay,
)
from pipeline.evaluate.submission import submission_rows, write_submission
from pipeline.files import read_json, sha256_file, write_csv, write_json
from pipeline.models.classifier import load_classifier
from pipeline.stages.common import load_splits, log_images, write_headline
from pipeline.taxonomy import Taxonomy, clean_classes
from pipeline.tracking import StageRun, git_commit

log = logging.getLogger(__name__)
FORMATS = {"torch_fp32": None, "onnx_fp32": "model.onnx", "onnx_int8": "model_int8.onnx",
           "tflite_int8": "model_int8.tflite"}
DELIVERED = "tflite_int8"  # what goes on the board: the confusion plot and predictions use it


def run(cfg: dict, root: Path, phase: str) -> None:
    ev = cfg["evaluate"]
    if phase not in cfg["phases"] or phase not in ev["phases"]:
        raise UserError(f"unknown phase {phase!r}; evaluate.phases: {sorted(ev['phases'])}")
    phase_cfg, source_phase = cfg["phases"][phase], ev["phases"][phase]
    taxonomy = Taxonomy.from_config(cfg["taxonomy"])
    classes = list(taxonomy.phase(phase_cfg["taxonomy"]).classes)
    paths = _model_paths(root, source_phase)
    out = root / layout.reports(phase)
    with StageRun(root, cfg, "evaluate", phase=phase) as tracker:
        tracker.log_params({"evaluate": ev, "phase": phase_cfg})
        predictors = {fmt: _mapped(load_predictor(path), classes, taxonomy, phase_cfg)
                      for fmt, path in paths.items()}
        test_sets, data_kind, data_note = _test_sets(cfg, root, phase, taxonomy,
                                                     phase_cfg["taxonomy"], classes)
        judged = judge(predictors, test_sets, classes, clean_classes(classes), DELIVERED)
        latency = {fmt: host_latency_ms(p)["median_ms"] for fmt, p in predictors.items()}
        robustness = _robustness(predictors[DELIVERED], test_sets, classes, ev)
        saliency = _saliency(root, source_phase, taxonomy, phase_cfg["taxonomy"], judged, ev)
        manifest = _manifest(root, source_phase)
        files_judged = {fmt: {"path": str(p.relative_to(root)), "sha256": sha256_file(p)}
                        for fmt, p in paths.items()}
        metrics = _write_outputs(out, judged, classes, files_judged, data_kind, data_note,
                                 predictors[DELIVERED].mapping.report(), robustness,
                                 saliency and saliency["metrics"])
        write_headline(root / layout.phase_metrics(phase),
                       {s: by_fmt[DELIVERED] for s, by_fmt in judged.metrics.items()},
                       {"edge": _edge_row(manifest)})
        write_report(out / "report.html", {**_report_context(
            phase, source_phase, judged, latency, robustness, manifest, files_judged,
            data_kind, data_note, predictors[DELIVERED], test_sets, root, ev),
            "saliency": saliency})
        if cfg["data"]["real"][phase]["unlabeled"]:
            _submission(predictors[DELIVERED], cfg["data"]["real"][phase]["unlabeled"], out)
        _log(tracker, phase, source_phase, judged, metrics, test_sets, data_kind, data_note,
             manifest, files_judged, out)


def _log(tracker, phase, source_phase, judged, metrics, test_sets, data_kind, data_note,
         manifest, files_judged, out) -> None:
    """Metrics, the test sets as datasets, the parent run's summary, tags and the report."""
    tracker.log_metrics(metrics)
    for name, (items, _) in test_sets.items():
        log_images(tracker, name, items, data_note if name.startswith("real") else
                   str(layout.SPLITS), "evaluation")
    primary = _primary(judged)
    tracker.log_summary({
        f"{phase}/{primary}/accuracy": judged.metrics[primary][DELIVERED]["accuracy"],
        f"{phase}/{primary}/macro_f1": judged.metrics[primary][DELIVERED]["macro_f1"],
        **{f"{phase}/{k}": manifest["edge"][k] for k in ("flash_bytes", "arena_bytes")
           if k in manifest.get("edge", {})}})
    tracker.set_tags({"data_source": data_kind, "judged_phase": source_phase,
                      **{f"{fmt}_sha256": v["sha256"] for fmt, v in files_judged.items()}})
    tracker.log_artifacts(out, "report")
    log.info("evaluate@%s (%s): %s", phase, data_kind,
             {k: round(v, 4) for k, v in metrics.items() if k.endswith("/accuracy")})


def _mapped(inner, classes, taxonomy, phase_cfg) -> MappedPredictor:
    """The predictor scored in the phase's classes (phase 2 maps the phase-1 model's)."""
    mapping = map_classes(inner.class_names, classes, taxonomy,
                          overrides=phase_cfg.get("mapping") or None,
                          default=phase_cfg.get("default_class", "other"))
    return MappedPredictor(inner, mapping, classes)


def _robustness(predictor, test_sets, classes, ev) -> list[dict]:
    items = class_balanced(test_sets["synthetic_test"][0], ev["robustness_images"])
    return robustness_table(predictor, [read_gray8(Path(p)) for p, _ in items],
                            [y for _, y in items], classes, seed=ev["seed"])


def _edge_row(manifest: dict) -> dict[str, float]:
    """Flash and arena of the delivered int8 model, in KiB."""
    edge = manifest.get("edge", {})
    return {name: round(edge[key] / 1024, 1) for name, key in
            (("flash_kb", "flash_bytes"), ("arena_kb", "arena_bytes")) if key in edge}


def _primary(judged) -> str:
    """The set the confusion plot and the worst-mistakes table show: the realest one."""
    return next(s for s in ("real_test", "real_val", "standin_test") if s in judged.metrics)


def _write_outputs(out, judged, classes, files_judged, data_kind, data_note, mapping,
                   robustness, localisation) -> dict[str, float]:
    """metrics.json, confusion.json (dvc plots), predictions.csv, per_class.csv and the
    confusion PNGs; returns the flat numeric metrics for MLflow."""
    primary = _primary(judged)
    records = [r for r in judged.predictions if r["set"] == primary]
    write_json(out / "confusion.json", confusion_records(
        [classes.index(r["actual"]) for r in records],
        [classes.index(r["predicted"]) for r in records], classes))
    write_csv(out / "predictions.csv", judged.predictions,
              ["set", "image", "actual", "predicted", "confidence"])
    _per_class_csv(out / "per_class.csv", judged.per_class)
    for set_name, cm in judged.confusion.items():
        save_figure(confusion_figure(cm, classes, f"{set_name} ({DELIVERED})"),
                    out / f"confusion_{set_name}.png")
    metrics_out = {s: {**by_fmt, "skipped": judged.skipped.get(s, 0)}
                   for s, by_fmt in judged.metrics.items()}
    write_json(out / "metrics.json", {
        **metrics_out, "models": files_judged, "data": {"kind": data_kind, "note": data_note},
        "class_mapping": mapping, "robustness": robustness,
        **({"localisation": localisation} if localisation else {})})
    flat = {f"{s}/{fmt}/{k}": v for s, by_fmt in judged.metrics.items()
            for fmt, m in by_fmt.items() for k, v in m.items()
            if isinstance(v, int | float) and np.isfinite(v)}
    for model, by_class in (localisation or {}).get("models", {}).items():
        flat.update({f"localisation/{model}/{cls}/{k}": v for cls, row in by_class.items()
                     for k, v in row.items() if k != "n" and np.isfinite(v)})
    return flat


def _saliency(root, source_phase, taxonomy, tax_phase, judged, ev) -> dict | None:
    """Where the delivered model and the synthetic teacher look, against the defect masks of
    synthetic test images, and overlays of real (or stand-in) examples per class."""
    n = ev["localisation_images"]
    if not n:
        return None
    by_fine: dict[str, list] = {}
    for r in load_splits(root)["test"]:
        by_fine.setdefault(r["fine_class"], []).append(r)
    items = [(str(root / r["path"]), str(root / r["path"].replace(
        f"{layout.SYNTHETIC}/images/", f"{layout.SYNTHETIC}/masks/")), r["fine_class"])
        for rows in by_fine.values() for r in rows[:n]]
    student = load_classifier(root / layout.phase_model(source_phase) / layout.CHECKPOINT)
    models = {"student": mask_localisation(student, items),
              "teacher": mask_localisation(load_classifier(root / layout.TEACHER /
                                                           layout.CHECKPOINT), items)}
    recall = {fine: judged.per_class["synthetic_test"][taxonomy.map_fine(fine, tax_phase)][
        "recall"] for fine in by_fine if "synthetic_test" in judged.per_class}
    flagged = looks_elsewhere(models["student"], recall)
    return {"metrics": {"models": models, "looks_elsewhere": flagged,
                        "tolerance_px": MASK_TOLERANCE_PX},
            "overlays": _overlays(student, judged.predictions, _primary(judged))}


def _overlays(model, predictions, primary) -> list[dict]:
    """Per true class of the primary set: its most confident mistake and most confident
    correct prediction, with the delivered model's saliency map over the image."""
    chosen = []
    for cls in sorted({r["actual"] for r in predictions if r["set"] == primary}):
        rows = sorted((r for r in predictions if r["set"] == primary and r["actual"] == cls),
                      key=lambda r: -r["confidence"])
        for right in (False, True):
            pick = next((r for r in rows if (r["actual"] == r["predicted"]) == right), None)
            if pick is not None:
                chosen.append({**pick, "kind": "correct" if right else "mistake"})
    if not chosen:
        return []
    shown, cams, _ = explain_images(model, [read_gray8(Path(r["image"])) for r in chosen])
    return [{"image": overlay(img, cam), "name": Path(r["image"]).name, "true": r["actual"],
             "predicted": r["predicted"], "confidence": r["confidence"], "kind": r["kind"]}
            for r, img, cam in zip(chosen, shown, cams, strict=True)]


def _goals(parity: dict) -> dict:
    """The edge goals against the delivered int8 model's parity (quantize.goals)."""
    if "goals" not in parity:
        return {}
    row = parity["table"].get(DELIVERED, {})
    return {"int8 top-1 agreement with fp32": f"{100 * row.get('top1_agreement', 0):.2f} %",
            "int8 disagreements that are output ties":
                f"{100 * row.get('disagreements_at_ties', 0):.2f} % of images",
            "edge goals": "all met" if not parity["goals_missed"]
            else "missed: " + "; ".join(parity["goals_missed"])}


def _report_context(phase, source_phase, judged, latency, robustness, manifest, files_judged,
                    data_kind, data_note, delivered, test_sets, root, ev) -> dict:
    classes = delivered.class_names
    return {
        "title": f"SEM defect classification — {phase}", "phase": phase,
        "data_kind": "real" if data_kind == "real" else "stand-in", "data_note": data_note,
        "summary": judged.summary_rows(latency),
        "confusions": [{"title": f"{s} · {DELIVERED}", "png": figure_png(confusion_figure(
            cm, classes, f"{s} ({DELIVERED})", normalise=True))}
            for s, cm in judged.confusion.items()],
        "per_class": judged.per_class,
        "worst": _worst(judged.predictions, _primary(judged), ev["worst_images"]),
        "robustness_table": robustness, "robustness_png": figure_png(robustness_figure(robustness)),
        "ood": _ood(manifest, delivered, test_sets),
        **({"class_mapping": delivered.mapping.report()} if source_phase != phase else {}),
        "edge": {**manifest.get("edge", {}), "host_latency_ms": latency[DELIVERED],
                 "host": host_name(), **_goals(manifest.get("parity", {}))},
        "provenance": {"judged model": f"{source_phase} ({Path(files_judged[DELIVERED]['path']).name})",
                       **{f"{fmt} sha256": v["sha256"] for fmt, v in files_judged.items()},
                       "git commit": git_commit(root),
                       "params hash": manifest.get("params_hash", "")},
    }


def _model_paths(root: Path, source_phase: str) -> dict[str, Path]:
    paths = {fmt: root / (layout.artifacts(source_phase) / name if name
                          else layout.phase_model(source_phase) / layout.CHECKPOINT)
             for fmt, name in FORMATS.items()}
    missing = [str(p.relative_to(root)) for p in paths.values() if not p.is_file()]
    if missing:
        raise UserError(f"missing delivered model files {missing}; run finetune_real and "
                        f"quantize for {source_phase} first (dvc repro)")
    return paths


def _test_sets(cfg, root, phase, taxonomy, tax_phase, classes):
    """{name: (items, skipped)}: synthetic test, the stand-in test, and the real test folder."""
    splits = load_splits(root)
    index = {c: i for i, c in enumerate(classes)}

    sets = {"synthetic_test": (phase_items(splits["test"], root, taxonomy, tax_phase), []),
            "standin_test": (standin_items(splits["heldout"], "test", root, taxonomy,
                                           tax_phase), [])}
    # The real validation split the phase's model was early-stopped on (when it had real
    # training images): optimistic, but real.
    trained = root / layout.phase_model(cfg["evaluate"]["phases"][phase]) / layout.REAL_DATA
    if cfg["evaluate"]["phases"][phase] == phase and read_real_data(trained, classes).val:
        sets["real_val"] = (read_real_data(trained, classes).val, [])
    folder = cfg["data"]["real"][phase]["test"]
    if not folder:
        kind = "real" if "real_val" in sets else "stand-in"
        return sets, kind, f"No real test folder for {phase}: {STANDIN} " \
            f"({', '.join(cfg['synth']['heldout_profiles'])})" + \
            (f"; real images only in 'real_val', the validation split of {trained.parent.name}'s"
             " real training folder (used for early stopping, so optimistic)."
             if "real_val" in sets else ".")
    report = import_folder(Path(folder), classes, taxonomy, min_size=cfg["data"]["real"]["min_size"])
    sets["real_test"] = ([(p, index[c]) for p, c in report.items], report.skipped)
    return sets, "real", f"Real test folder {folder}: {len(report.items)} images, " \
        f"{len(report.skipped)} skipped."


def _manifest(root: Path, source_phase: str) -> dict:
    path = root / layout.artifacts(source_phase) / layout.MANIFEST
    return read_json(path) if path.is_file() else {}


def _ood(manifest: dict, predictor, test_sets) -> dict | None:
    threshold = manifest.get("ood_threshold")
    if threshold is None:
        return None
    sets = {}
    for name, (items, _) in test_sets.items():
        kept, probs, _ = predict_paths(predictor, [p for p, _ in items])
        sets[name] = flag_summary(probs, threshold, np.array([items[k][1] for k in kept]))
    return {"threshold": threshold, "quantile": 0.05, "sets": sets}


def _worst(predictions: list[dict], primary: str, n: int) -> list[dict]:
    wrong = sorted((r for r in predictions if r["set"] == primary and r["actual"] != r["predicted"]),
                   key=lambda r: -r["confidence"])[:n]
    return [{"image": read_gray8(Path(r["image"])), "name": Path(r["image"]).name,
             "true": r["actual"], "predicted": r["predicted"], "confidence": r["confidence"]}
            for r in wrong]


def _per_class_csv(path: Path, per_class: dict) -> None:
    rows = [{"set": s, "class": c, **v} for s, by_class in per_class.items()
            for c, v in by_class.items()]
    write_csv(path, rows, ["set", "class", "precision", "recall", "f1", "support"])


def _submission(predictor, folder: str, out: Path) -> None:
    """The organisers' format for the unlabelled folder: image_name,predicted_class."""
    paths, skipped = load_unlabelled(Path(folder))
    kept, probs, more = predict_paths(predictor, paths)
    for path, reason in skipped + more:
        log.warning("unlabelled image skipped: %s (%s)", path, reason)
    write_submission(out / "submission.csv", submission_rows(
        folder, [paths[k] for k in kept], [predictor.class_names[int(i)] for i in probs.argmax(1)]))
