"""Agreement of exported formats with the reference (torch) model, and the release gates.

Format names are free-form `_`-separated tokens, e.g. "onnx_fp32", "onnx_int8",
"tflite_float", "tflite_int8", "tflm_int8". A gate key is `<selector>_<metric>`; the selector
picks every format whose name equals it or contains it as a token ("int8" picks all three
int8 formats, "onnx_fp32" just that one).
"""

from __future__ import annotations

import numpy as np

from pipeline.errors import UserError

# metric suffix → (table column, True if the value must be at least the bound)
_METRICS = {"max_abs_diff": ("max_abs_logit_diff", False),
            "min_top1_agreement": ("top1_agreement", True),
            "max_accuracy_drop": ("accuracy_drop", False)}


def parity_table(reference_logits: np.ndarray, candidates: dict[str, np.ndarray],
                 labels: np.ndarray) -> dict:
    """{"reference": {accuracy, n}, "<format>": {max_abs_logit_diff, top1_agreement,
    accuracy, accuracy_delta, top1_ties, disagreements_at_ties}} for logits (N, C) on the same
    N images with `labels` (N,).

    max_abs_logit_diff is reported for every format; for int8 ones it is the dequantized
    difference, expected to be far larger than for float formats. top1_ties is the share of
    images whose top score two or more classes share: an int8 output cannot order classes
    closer than one step, and argmax then takes the first. disagreements_at_ties is the share
    that both disagrees with the reference and is such a tie (the rest are reorderings).
    """
    ref = np.asarray(reference_logits, dtype=np.float64)
    labels = np.asarray(labels)
    if ref.ndim != 2 or len(labels) != len(ref):
        raise ValueError(f"reference logits {ref.shape} and labels {labels.shape} do not match")
    ref_pred = ref.argmax(1)
    ref_acc = float((ref_pred == labels).mean())
    table: dict = {"reference": {"accuracy": ref_acc, "n": len(ref)}}
    for name, logits in candidates.items():
        logits = np.asarray(logits, dtype=np.float64)
        if logits.shape != ref.shape:
            raise ValueError(f"{name}: logits {logits.shape}, reference {ref.shape}")
        pred = logits.argmax(1)
        acc = float((pred == labels).mean())
        tied = (logits == logits.max(1, keepdims=True)).sum(1) > 1
        table[name] = {"max_abs_logit_diff": float(np.abs(logits - ref).max()),
                       "top1_agreement": float((pred == ref_pred).mean()),
                       "accuracy": acc, "accuracy_delta": acc - ref_acc,
                       "top1_ties": float(tied.mean()),
                       "disagreements_at_ties": float((tied & (pred != ref_pred)).mean())}
    return table


def _matches(selector: str, fmt: str) -> bool:
    tokens = fmt.split("_")
    sel = selector.split("_")
    return any(tokens[i: i + len(sel)] == sel for i in range(len(tokens) - len(sel) + 1))


def check_gates(table: dict, gates: dict) -> list[str]:
    """Human-readable gate failures (empty list = all pass).

    e.g. gates = {"onnx_fp32_max_abs_diff": 1e-3, "int8_min_top1_agreement": 0.97,
    "int8_max_accuracy_drop": 0.02}. A gate that names no format in the table is a
    configuration mistake (UserError), so a typo cannot pass silently.
    """
    formats = [k for k in table if k != "reference"]
    failures = []
    for key, bound in gates.items():
        metric = next((m for m in _METRICS if key.endswith("_" + m)), None)
        if metric is None:
            raise UserError(f"quantize gate {key!r}: the name must end in one of "
                            f"{sorted(_METRICS)}; fix the gates config")
        selector = key[: -len(metric) - 1]
        chosen = [f for f in formats if _matches(selector, f)]
        if not chosen:
            raise UserError(f"quantize gate {key!r} matches no exported format ({formats}); "
                            "fix the gates config")
        column, at_least = _METRICS[metric]
        for fmt in chosen:
            row = table[fmt]
            value = -row["accuracy_delta"] if column == "accuracy_drop" else row[column]
            if (value < bound) if at_least else (value > bound):
                relation = "below the minimum" if at_least else "above the maximum"
                failures.append(f"{fmt}: {column} = {value:.6g} is {relation} {bound:g} ({key})")
    return failures
