"""The user commands' logic: predict a folder of images, evaluate on a labelled folder.

A model trained for one taxonomy can be judged on another (phase 1's model on phase 2's
classes): model classes map to target classes through the taxonomy's canonical names, with
explicit overrides for ambiguous cases; probabilities of model classes that share a target
class are summed.
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from pipeline.data.images import ImageReadError, read_gray8
from pipeline.data.importer import import_folder, load_unlabelled
from pipeline.errors import UserError
from pipeline.evaluate.inference import MANIFEST_NAME, Predictor, load_predictor, read_manifest
from pipeline.evaluate.metrics import classification_metrics
from pipeline.evaluate.ood import flag_low_confidence
from pipeline.evaluate.plots import confusion_figure, save_figure
from pipeline.files import sha256_file, write_csv, write_json, write_text
from pipeline.taxonomy import Taxonomy

SUBMISSION_COLUMNS = ["image_name", "predicted_class"]


# ---- class mapping ----------------------------------------------------------------------

class ClassMapping(dict[str, str]):
    """model class → target class, plus how each entry was decided (for reports).

    `how[model_class]` is "name" (same canonical name), "override" or "default";
    `ambiguous[model_class]` lists the target classes it could have meant (e.g. clean →
    CLEAN_LAYER, CLEAN_VIA, CLEAN_CRACK); `unpredictable` are target classes no model class
    maps to (the model can never predict them).
    """

    def __init__(self, mapping: Mapping[str, str], how: Mapping[str, str],
                 ambiguous: Mapping[str, list[str]], unpredictable: list[str]) -> None:
        super().__init__(mapping)
        self.how = dict(how)
        self.ambiguous = dict(ambiguous)
        self.unpredictable = list(unpredictable)

    def report(self) -> dict:
        """JSON-ready: the mapping grouped by how it was decided."""
        by = {kind: {m: t for m, t in self.items() if self.how[m] == kind}
              for kind in ("name", "override", "default")}
        return {"mapping": dict(self), "by_name": by["name"], "by_override": by["override"],
                "by_default": by["default"], "ambiguous": self.ambiguous,
                "unpredictable_targets": self.unpredictable}

    def summary(self) -> str:
        """Human-readable lines for the non-obvious entries."""
        lines = [f"Model class {m!r} -> {t!r} ({self.how[m]})"
                 for m, t in self.items() if self.how[m] != "name"]
        lines += [f"  {m!r} could mean {cands}; set an override to choose"
                  for m, cands in self.ambiguous.items() if self.how[m] == "default"]
        if self.unpredictable:
            lines.append(f"Target classes the model cannot predict: {self.unpredictable}")
        return "\n".join(lines)


def map_classes(model_classes: Sequence[str], target_classes: Sequence[str], taxonomy: Taxonomy,
                *, overrides: Mapping[str, str] | None = None,
                default: str | None = "other") -> ClassMapping:
    """Map each model class to a target class: override, else same canonical name (through
    `taxonomy.resolve_folder`, so 'cmp' → 'CMP', 'CLEAN_VIA' → 'clean'), else the target class
    whose canonical name is canonical(default); UserError if that is needed and missing."""
    overrides = dict(overrides or {})
    bad = {m: t for m, t in overrides.items() if m not in model_classes or t not in target_classes}
    if bad:
        raise UserError(f"class mapping overrides {bad}: keys must be model classes "
                        f"{list(model_classes)} and values target classes {list(target_classes)}")
    fallback = None
    if default is not None:
        fallback = next((t for t in target_classes
                         if taxonomy.canonical(t) == taxonomy.canonical(default)), None)
    mapping, how, ambiguous = {}, {}, {}
    for m in model_classes:
        target = overrides.get(m) or taxonomy.resolve_folder(m, target_classes)
        if target is not None:
            mapping[m], how[m] = target, "override" if m in overrides else "name"
            continue
        key = taxonomy.canonical(m)
        candidates = [t for t in target_classes if taxonomy.canonical(t).startswith(key + "_")]
        if candidates:
            ambiguous[m] = candidates
        if fallback is None:
            example = candidates[0] if candidates else target_classes[0]
            raise UserError(f"model class {m!r} has no counterpart among {list(target_classes)}"
                            f"{f' (it could be any of {candidates})' if candidates else ''}; "
                            f"add a mapping override such as {m}: {example}")
        mapping[m], how[m] = fallback, "default"
    unpredictable = [t for t in target_classes if t not in mapping.values()]
    return ClassMapping(mapping, how, ambiguous, unpredictable)


def map_probs(probs: np.ndarray, mapping: Mapping[str, str], model_classes: Sequence[str],
              target_classes: Sequence[str]) -> np.ndarray:
    """(N, model C) → (N, target T) probabilities, summed over model classes per target."""
    onehot = np.zeros((len(model_classes), len(target_classes)), np.float32)
    for i, m in enumerate(model_classes):
        onehot[i, list(target_classes).index(mapping[m])] = 1.0
    return np.asarray(probs, np.float32) @ onehot


class MappedPredictor:
    """A Predictor that scores `target_classes` through a ClassMapping of another's classes."""

    def __init__(self, inner: Predictor, mapping: Mapping[str, str],
                 target_classes: Sequence[str]) -> None:
        self.inner, self.mapping = inner, mapping
        self.class_names = list(target_classes)
        self.image_size, self.fmt, self.path = inner.image_size, inner.fmt, inner.path

    def predict(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return map_probs(self.inner.predict(images), self.mapping, self.inner.class_names,
                         self.class_names)


# ---- predicting files -------------------------------------------------------------------

def predict_paths(predictor: Predictor, paths: Sequence[str | Path], chunk: int = 64
                  ) -> tuple[list[int], np.ndarray, list[tuple[str, str]]]:
    """(indices of the paths read, their probabilities, skipped (path, reason)).

    Reads `chunk` images at a time so a big folder never sits in memory at full resolution.
    """
    kept: list[int] = []
    probs: list[np.ndarray] = [np.zeros((0, len(predictor.class_names)), np.float32)]
    skipped: list[tuple[str, str]] = []
    for start in range(0, len(paths), chunk):
        images = []
        for i in range(start, min(start + chunk, len(paths))):
            try:
                images.append(read_gray8(Path(paths[i])))
                kept.append(i)
            except ImageReadError as exc:
                skipped.append((str(paths[i]), exc.reason))
        if images:
            probs.append(predictor.predict(images))
    return kept, np.concatenate(probs), skipped


@dataclass
class FolderPredictions:
    """predict_folder's result: CSV-ready rows and their columns, unreadable files, the
    threshold used."""

    rows: list[dict]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    threshold: float | None = None
    columns: list[str] = field(default_factory=list)

    def csv_text(self) -> str:
        """The CSV predict_folder writes to a file (header, csv quoting), as text."""
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns, extrasaction="ignore",
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        return buf.getvalue()


def predict_folder(model_path: str | Path, images_path: str | Path, *,
                   out_csv: Path | None = None,
                   fmt: Literal["default", "submission"] = "default",
                   threshold: float | None = None) -> FolderPredictions:
    """Classify every image in a folder (recursively) or one file, optionally writing a CSV.

    default CSV: image, predicted_class, confidence[, flagged] (flagged when a threshold is
    given or manifest.json beside the model has "ood_threshold"); submission CSV: exactly
    image_name,predicted_class. Image names are paths relative to the folder. Unreadable
    files are listed on stderr and in the result, never fatal (unless none is readable).
    """
    if fmt not in ("default", "submission"):
        raise UserError(f"output format {fmt!r} is unknown; use 'default' or 'submission'")
    images_path = Path(images_path)
    predictor = load_predictor(model_path)
    if threshold is None:
        threshold = _manifest_threshold(Path(model_path))
    if images_path.is_file():
        root, paths, skipped = images_path.parent, [str(images_path)], []
    elif images_path.is_dir():
        root = images_path
        paths, skipped = load_unlabelled(images_path)
    else:
        raise UserError(f"image path {images_path} does not exist; give a folder or an image")
    kept, probs, unreadable = predict_paths(predictor, paths)
    skipped += unreadable
    _report_skipped(skipped)
    if not kept:
        first = f" (e.g. {': '.join(skipped[0])})" if skipped else ""
        raise UserError(f"no readable image in {images_path}{first}; give PNG/JPEG/TIFF/BMP files")
    names = [Path(paths[i]).absolute().relative_to(root.absolute()).as_posix() for i in kept]
    predicted = [predictor.class_names[k] for k in probs.argmax(axis=1)]
    if fmt == "submission":
        rows = [{"image_name": n, "predicted_class": p} for n, p in zip(names, predicted,
                                                                         strict=True)]
        columns = SUBMISSION_COLUMNS
    else:
        rows = [{"image": n, "predicted_class": p, "confidence": round(float(c), 6)}
                for n, p, c in zip(names, predicted, probs.max(axis=1), strict=True)]
        columns = ["image", "predicted_class", "confidence"]
        if threshold is not None:
            for row, flag in zip(rows, flag_low_confidence(probs, threshold), strict=True):
                row["flagged"] = bool(flag)
            columns.append("flagged")
    result = FolderPredictions(rows, skipped, threshold, columns)
    if out_csv is not None:
        write_text(out_csv, result.csv_text())  # the very text `predict` prints to stdout
    return result


def _manifest_threshold(model_path: Path) -> float | None:
    value = read_manifest(model_path).get("ood_threshold")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UserError(f"{model_path.parent / MANIFEST_NAME}: ood_threshold {value!r} is not a "
                        "number; rebuild it (dvc repro)")
    return float(value)


def _report_skipped(skipped: Iterable[tuple[str, str]]) -> None:
    skipped = list(skipped)
    if skipped:
        lines = [f"Skipped {len(skipped)} files:"] + [f"  {p}: {r}" for p, r in skipped]
        print("\n".join(lines), file=sys.stderr)


# ---- evaluating on a labelled folder ----------------------------------------------------

def evaluate_folder(model_path: str | Path, labelled_dir: str | Path, *, taxonomy: Taxonomy,
                    classes: Sequence[str], out_dir: Path,
                    mapping_overrides: Mapping[str, str] | None = None,
                    clean_classes: Sequence[str] = ()) -> dict:
    """Score a model on <labelled_dir>/<class folder>/*.png labelled with `classes`.

    Writes out_dir/metrics.json (classification_metrics + model, class mapping, import
    counts), predictions.csv (image, actual, predicted, confidence), confusion.png,
    confusion_normalised.png and import_report.json; returns the metrics dict.
    """
    classes = list(classes)
    out_dir = Path(out_dir)
    predictor = load_predictor(model_path)  # first: a broken model fails before a long import
    report = import_folder(Path(labelled_dir), classes, taxonomy)
    print(report.summary(), file=sys.stderr)
    mapping = map_classes(predictor.class_names, classes, taxonomy, overrides=mapping_overrides)
    if mapping.summary():
        print(mapping.summary(), file=sys.stderr)
    mapped = MappedPredictor(predictor, mapping, classes)
    paths = [p for p, _ in report.items]
    kept, probs, unreadable = predict_paths(mapped, paths)
    _report_skipped(unreadable)  # import_folder decoded them already; only races land here
    y_true = [classes.index(report.items[i][1]) for i in kept]
    y_pred = probs.argmax(axis=1)
    metrics = classification_metrics(y_true, y_pred, classes, probs, clean_classes=clean_classes)
    metrics["model"] = {"path": str(model_path), "format": predictor.fmt,
                        "sha256": sha256_file(model_path), "classes": predictor.class_names}
    metrics["class_mapping"] = mapping.report()
    metrics["skipped"] = len(report.skipped) + len(unreadable)
    root = Path(report.root)
    rows = [{"image": Path(paths[i]).relative_to(root).as_posix(), "actual": classes[t],
             "predicted": classes[p], "confidence": round(float(c), 6)}
            for i, t, p, c in zip(kept, y_true, y_pred, probs.max(axis=1), strict=True)]
    write_csv(out_dir / "predictions.csv", rows, ["image", "actual", "predicted", "confidence"])
    write_json(out_dir / "import_report.json", report.to_dict())
    for normalise, name in ((False, "confusion.png"), (True, "confusion_normalised.png")):
        title = f"{Path(labelled_dir).name} ({'normalised' if normalise else 'counts'}, " \
                f"n={metrics['n']})"
        save_figure(confusion_figure(metrics["confusion"], classes, title, normalise=normalise),
                    out_dir / name)
    write_json(out_dir / "metrics.json", metrics)
    return metrics
