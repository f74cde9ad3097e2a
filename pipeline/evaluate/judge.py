"""Judge delivered models on test sets: every format on every set, in one call.

`judge` takes predictors and labelled sets and returns a `Judgement` (metrics, per-class
tables, confusion matrices and per-image predictions of the delivered format); the evaluate
stage writes and logs it, and benchmarks or notebooks can call it the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from pipeline.evaluate.folder import predict_paths
from pipeline.evaluate.inference import Predictor
from pipeline.evaluate.metrics import classification_metrics

Items = list[tuple[str, int]]
HEADLINE = ("accuracy", "macro_f1", "defect_recall", "clean_false_alarm", "ece")


@dataclass
class Judgement:
    metrics: dict[str, dict[str, dict]]  # set → format → scalar metrics
    per_class: dict[str, dict]  # set → per-class table of the delivered format
    confusion: dict[str, np.ndarray]  # set → confusion matrix of the delivered format
    predictions: list[dict] = field(default_factory=list)  # delivered format, every image
    skipped: dict[str, int] = field(default_factory=dict)  # set → unreadable images

    def summary_rows(self, latency_ms: Mapping[str, float] | None = None) -> list[dict]:
        """One row per (set, format) with the headline metrics (and host latency)."""
        return [{"test_set": s, "model": fmt, **{k: m.get(k) for k in HEADLINE},
                 "latency_ms": (latency_ms or {}).get(fmt)}
                for s, by_fmt in self.metrics.items() for fmt, m in by_fmt.items()]


def judge(predictors: Mapping[str, Predictor], sets: Mapping[str, tuple[Items, Sequence]],
          classes: Sequence[str], clean_classes: Sequence[str], delivered: str) -> Judgement:
    """Score each predictor on each named set of (path, label) items (with the set's
    already-skipped files); `delivered` names the format whose details are kept."""
    result = Judgement({}, {}, {})
    for set_name, (items, skipped) in sets.items():
        labels = np.array([y for _, y in items])
        result.metrics[set_name] = {}
        for fmt, predictor in predictors.items():
            kept, probs, unread = predict_paths(predictor, [p for p, _ in items])
            m = classification_metrics(labels[kept], probs.argmax(1), list(classes), probs,
                                       clean_classes=list(clean_classes))
            result.metrics[set_name][fmt] = {k: v for k, v in m.items()
                                             if k not in ("per_class", "confusion")}
            if fmt == delivered:
                result.per_class[set_name], result.confusion[set_name] = m["per_class"], \
                    np.asarray(m["confusion"])
                result.predictions += [
                    {"set": set_name, "image": items[k][0], "actual": classes[labels[k]],
                     "predicted": classes[int(i)], "confidence": float(probs[j].max())}
                    for j, (k, i) in enumerate(zip(kept, probs.argmax(1), strict=True))]
                result.skipped[set_name] = len(skipped) + len(unread)
    return result
