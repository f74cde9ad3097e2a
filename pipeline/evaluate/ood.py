"""Low-confidence / out-of-distribution flag: a max-softmax threshold (Hendrycks & Gimpel 2017).

The threshold is the `quantile` of the maximum softmax probability on the VALIDATION set, so
about that fraction of in-distribution images is flagged by construction; it is never fitted
on test data. Images from an unseen tool, or unlike any class, tend to score lower and get
flagged for a human to look at.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.errors import UserError


def calibrate_threshold(val_probs: np.ndarray, quantile: float = 0.05) -> float:
    """The `quantile` of validation max-probabilities (flags ~quantile of val images)."""
    probs = np.asarray(val_probs)
    if probs.ndim != 2 or len(probs) == 0:
        raise ValueError(f"val_probs must be a non-empty (N, C) array, got shape {probs.shape}")
    if not 0.0 < quantile < 1.0:
        raise UserError(f"ood quantile {quantile} must be strictly between 0 and 1")
    return float(np.quantile(probs.max(axis=1), quantile))


def flag_low_confidence(probs: np.ndarray, threshold: float) -> np.ndarray:
    """True where the top probability is below `threshold`."""
    return np.asarray(probs).max(axis=1) < threshold


def flag_summary(probs: np.ndarray, threshold: float,
                 y_true: Sequence[int] | None = None) -> dict:
    """Flag rate on a set; with labels, accuracy of the flagged and the kept images."""
    flagged = flag_low_confidence(probs, threshold)
    out: dict = {"threshold": float(threshold), "n": int(len(flagged)),
                 "flag_rate": float(flagged.mean()) if len(flagged) else 0.0}
    if y_true is not None:
        correct = np.asarray(probs).argmax(axis=1) == np.asarray(y_true)
        for name, mask in (("flagged", flagged), ("kept", ~flagged)):
            out[f"accuracy_{name}"] = float(correct[mask].mean()) if mask.any() else float("nan")
    return out
