"""Classification metrics shared by training, evaluation and the user commands.

Macro and weighted averages are torchmetrics' (the functions behind the metrics that
SEMClassifier logs during validation, so the F1 that picks checkpoints is the one reported).
Macro leaves out a class absent from both targets and predictions; a class that is predicted
but never true counts with precision, recall and F1 0 (as sklearn's default labels would).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
from torchmetrics.functional.classification import (
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)

_AVERAGED = {"precision": multiclass_precision, "recall": multiclass_recall,
             "f1": multiclass_f1_score}


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, bins: int = 15) -> float:
    """ECE with equal-width confidence bins (Guo et al. 2017)."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def classification_metrics(
    y_true: Sequence[int],
    y_pred: Sequence[int],
    class_names: Sequence[str],
    probs: np.ndarray | None = None,
    clean_classes: Sequence[str] = (),
) -> dict:
    """Accuracy, macro/weighted P/R/F1, per-class report, confusion matrix; with `probs`, ECE;
    with `clean_classes`, defect-vs-clean detection (recall of any defect as a defect, and the
    false-alarm rate on clean images)."""
    y_true = np.asarray(y_true, dtype=int)
    y_pred = np.asarray(y_pred, dtype=int)
    labels = list(range(len(class_names)))
    out: dict = {"n": int(len(y_true)), "accuracy": float((y_true == y_pred).mean()) if len(y_true) else 0.0}
    target, preds = torch.as_tensor(y_true), torch.as_tensor(y_pred)
    for avg in ("macro", "weighted"):
        for key, score in _AVERAGED.items():
            out[f"{avg}_{key}"] = float(score(preds, target, len(labels), average=avg))
    p, r, f, s = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0
    )
    out["per_class"] = {
        name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, name in enumerate(class_names)
    }
    out["confusion"] = confusion_matrix(y_true, y_pred, labels=labels).tolist()
    if probs is not None and len(y_true):
        out["ece"] = expected_calibration_error(np.asarray(probs), y_true)
    clean = [class_names.index(c) for c in clean_classes if c in class_names]
    if clean:
        true_clean = np.isin(y_true, clean)
        pred_clean = np.isin(y_pred, clean)
        defects = ~true_clean
        out["defect_recall"] = float((~pred_clean[defects]).mean()) if defects.any() else float("nan")
        out["clean_false_alarm"] = float((~pred_clean[true_clean]).mean()) if true_clean.any() else float("nan")
    return out


def scalar_metrics(metrics: dict, prefix: str) -> dict[str, float]:
    """The scalar entries of `classification_metrics` output, named `<prefix>/<metric>`."""
    return {
        f"{prefix}/{k}": float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and k != "n"
    }


def confusion_records(y_true: Sequence[int], y_pred: Sequence[int],
                      class_names: Sequence[str]) -> list[dict[str, str]]:
    """One {"actual", "predicted"} record per image, as DVC's confusion plot template reads."""
    return [{"actual": class_names[t], "predicted": class_names[p]}
            for t, p in zip(y_true, y_pred, strict=True)]


# The columns of `dvc metrics show`: one shared vocabulary, so every stage's rows line up in
# one table narrower than a terminal. false_alarm is classification_metrics' clean_false_alarm.
HEADLINE = {"accuracy": "accuracy", "macro_f1": "macro_f1", "defect_recall": "defect_recall",
            "false_alarm": "clean_false_alarm"}


def headline(metrics: dict) -> dict[str, float]:
    """The scores `dvc metrics show` lists for one test set, rounded to 4 decimals."""
    return {name: round(float(metrics[key]), 4) for name, key in HEADLINE.items()
            if key in metrics and np.isfinite(metrics[key])}
