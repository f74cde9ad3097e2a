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
from pipeline.data.real import STANDIN, read_real_data
from pipeline.errors import UserError
from pipeline.evaluate.folder import MappedPredictor, map_classes, predict_paths
from pipeline.evaluate.inference import host_latency_ms, host_name, load_predictor
from pipeline.evaluate.metrics import classification_metrics, confusion_records
from pipeline.evaluate.ood import flag_summary
from pipeline.evaluate.plots import confusion_figure, figure_png, save_figure
from pipeline.evaluate.report import write_report
from pipeline.evaluate.robustness import robustness_figure, robustness_table
from pipeline.evaluate.submission import submission_rows, write_submission
from pipeline.files import read_json, sha256_file, write_csv, write_json
from pipeline.stages.common import load_splits
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
    tax_phase = phase_cfg["taxonomy"]
    classes = list(taxonomy.phase(tax_phase).classes)
    clean = clean_classes(classes)
    paths = _model_paths(root, source_phase)
    out = root / layout.reports(phase)
    with StageRun(root, cfg, "evaluate", phase=phase) as tracker:
        tracker.log_params({"evaluate": ev, "phase": phase_cfg})
        predictors = {}
        for fmt, path in paths.items():
            inner = load_predictor(path)
            mapping = map_classes(inner.class_names, classes, taxonomy,
                                  overrides=phase_cfg.get("mapping") or None,
                                  default=phase_cfg.get("default_class", "other"))
            predictors[fmt] = MappedPredictor(inner, mapping, classes)
        mapping = predictors[DELIVERED].mapping
        test_sets, data_kind, data_note = _test_sets(cfg, root, phase, taxonomy, tax_phase, classes)

        summary_rows, metrics_out, per_class, confusions = [], {}, {}, []
        latency = {fmt: host_latency_ms(p)["median_ms"] for fmt, p in predictors.items()}
        predictions = []
        for set_name, (items, skipped) in test_sets.items():
            labels = np.array([y for _, y in items])
            metrics_out[set_name] = {}
            for fmt, predictor in predictors.items():
                kept, probs, _ = predict_paths(predictor, [p for p, _ in items])
                m = classification_metrics(labels[kept], probs.argmax(1), classes, probs,
                                           clean_classes=clean)
                metrics_out[set_name][fmt] = {k: v for k, v in m.items()
                                              if k not in ("per_class", "confusion")}
                summary_rows.append({"test_set": set_name, "model": fmt, **{
                    k: m.get(k) for k in ("accuracy", "macro_f1", "defect_recall",
                                          "clean_false_alarm", "ece")},
                    "latency_ms": latency[fmt]})
                if fmt == DELIVERED:
                    per_class[set_name] = m["per_class"]
                    confusions.append({"title": f"{set_name} · {fmt}", "png": figure_png(
                        confusion_figure(m["confusion"], classes, f"{set_name} ({fmt})",
                                         normalise=True))})
                    save_figure(confusion_figure(m["confusion"], classes, f"{set_name} ({fmt})"),
                                out / f"confusion_{set_name}.png")
                    predictions += [
                        {"set": set_name, "image": items[k][0], "actual": classes[labels[k]],
                         "predicted": classes[int(i)], "confidence": float(probs[j].max())}
                        for j, (k, i) in enumerate(zip(kept, probs.argmax(1), strict=True))]
            metrics_out[set_name]["skipped"] = len(skipped)

        primary = next(s for s in ("real_test", "real_val", "standin_test") if s in test_sets)
        records = [r for r in predictions if r["set"] == primary]
        write_json(out / "confusion.json", confusion_records(
            [classes.index(r["actual"]) for r in records],
            [classes.index(r["predicted"]) for r in records], classes))
        write_csv(out / "predictions.csv", predictions,
                  ["set", "image", "actual", "predicted", "confidence"])
        _per_class_csv(out / "per_class.csv", per_class)

        robust_items = test_sets["synthetic_test"][0][: ev["robustness_images"]]
        table = robustness_table(predictors[DELIVERED],
                                 [read_gray8(Path(p)) for p, _ in robust_items],
                                 [y for _, y in robust_items], classes, seed=ev["seed"])
        robust_png = figure_png(robustness_figure(table))
        manifest = _manifest(root, source_phase)
        files_judged = {fmt: {"path": str(p.relative_to(root)), "sha256": sha256_file(p)}
                        for fmt, p in paths.items()}
        ood = _ood(manifest, predictors[DELIVERED], test_sets)
        metrics_out["models"] = files_judged
        metrics_out["data"] = {"kind": data_kind, "note": data_note}
        metrics_out["class_mapping"] = mapping.report()
        metrics_out["robustness"] = table
        write_json(out / "metrics.json", metrics_out)

        write_report(out / "report.html", {
            "title": f"SEM defect classification — {phase}", "phase": phase,
            "data_kind": "real" if data_kind == "real" else "stand-in", "data_note": data_note,
            "summary": summary_rows, "confusions": confusions, "per_class": per_class,
            "worst": _worst(predictions, primary, ev["worst_images"]),
            "robustness_table": table, "robustness_png": robust_png, "ood": ood,
            **({"class_mapping": mapping.report()} if source_phase != phase else {}),
            "edge": {**manifest.get("edge", {}), "host_latency_ms": latency[DELIVERED],
                     "host": host_name()},
            "provenance": {"judged model": f"{source_phase} ({paths[DELIVERED].name})",
                           **{f"{fmt} sha256": v["sha256"] for fmt, v in files_judged.items()},
                           "git commit": git_commit(root),
                           "params hash": manifest.get("params_hash", "")},
        })
        if cfg["data"]["real"][phase]["unlabeled"]:
            _submission(predictors[DELIVERED], cfg["data"]["real"][phase]["unlabeled"], out)

        flat = {f"{s}/{fmt}/{k}": v for s, by_fmt in metrics_out.items() if s in test_sets
                for fmt, m in by_fmt.items() if isinstance(m, dict)
                for k, v in m.items() if isinstance(v, int | float) and np.isfinite(v)}
        tracker.log_metrics(flat)
        tracker.set_tags({"data_source": data_kind, "judged_phase": source_phase,
                          **{f"{fmt}_sha256": v["sha256"] for fmt, v in files_judged.items()}})
        tracker.log_artifacts(out, "report")
        log.info("evaluate@%s (%s): %s", phase, data_kind,
                 {k: round(v, 4) for k, v in flat.items() if k.endswith("/accuracy")})


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

    def mapped(rows):
        return [(str(root / r["path"]), index[taxonomy.map_fine(r["fine_class"], tax_phase)])
                for r in rows]

    sets = {"synthetic_test": (mapped(splits["test"]), []),
            "standin_test": (mapped([r for r in splits["heldout"]
                                     if r["standin_split"] == "test"]), [])}
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
