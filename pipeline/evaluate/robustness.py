"""Deterministic image corruptions and the accuracy drop they cause.

The kinds mimic what changes between SEM tools and sessions: detector noise, focus (blur),
contrast/brightness response (gamma), lower acquisition resolution and lossy export (JPEG).
Corruptions act on the uint8 image as read from disk, before the model's own preprocessing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import cv2
import numpy as np

from pipeline.errors import UserError
from pipeline.evaluate.metrics import classification_metrics

# kind -> levels. noise: gaussian sigma in grey levels; blur: gaussian sigma in pixels;
# gamma: exponent on [0, 1] intensities; rescale: downscale factor (then back up);
# jpeg: quality.
CORRUPTIONS: dict[str, list[float]] = {
    "noise": [4, 8, 16],
    "blur": [0.8, 1.5, 2.5],
    "gamma": [0.6, 0.8, 1.25, 1.6],
    "rescale": [0.5, 0.35],
    "jpeg": [50, 25],
}


def corrupt(img: np.ndarray, kind: str, level: float, seed: int) -> np.ndarray:
    """A corrupted copy of a uint8 (H, W) image; same arguments → same pixels.

    Identity levels: noise 0, blur 0, gamma 1, rescale 1. `seed` only matters for noise.
    """
    img = np.asarray(img, dtype=np.uint8)
    if kind == "noise":
        if level <= 0:
            return img.copy()
        noise = np.random.default_rng(seed).normal(0.0, level, img.shape)
        return np.clip(np.rint(img + noise), 0, 255).astype(np.uint8)
    if kind == "blur":
        return cv2.GaussianBlur(img, (0, 0), sigmaX=level) if level > 0 else img.copy()
    if kind == "gamma":
        lut = np.clip(np.rint(255.0 * (np.arange(256) / 255.0) ** level), 0, 255)
        return lut.astype(np.uint8)[img]
    if kind == "rescale":
        if not 0 < level <= 1:
            raise UserError(f"corruption rescale: level {level} must be in (0, 1]")
        if level == 1:
            return img.copy()
        h, w = img.shape
        small = cv2.resize(img, (max(1, round(w * level)), max(1, round(h * level))),
                           interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    if kind == "jpeg":
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(level)])
        if not ok:
            raise RuntimeError(f"JPEG encoding failed at quality {level}")
        return cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
    raise UserError(f"unknown corruption {kind!r}; known: {sorted(CORRUPTIONS)}")


def class_balanced(items: Sequence[tuple[str, int]], n: int) -> list[tuple[str, int]]:
    """Up to n items taking each class in turn, in their given order within a class: a
    subset that keeps every class (the splits list images class by class)."""
    by_class: dict[int, list] = {}
    for item in items:
        by_class.setdefault(item[1], []).append(item)
    queues = [iter(v) for _, v in sorted(by_class.items())]
    picked: list[tuple[str, int]] = []
    while queues and len(picked) < n:
        for queue in list(queues):
            item = next(queue, None)
            if item is None:
                queues.remove(queue)
            elif len(picked) < n:
                picked.append(item)
    return picked


def robustness_table(predictor, images: Sequence[np.ndarray], labels: Sequence[int],
                     class_names: Sequence[str], *,
                     corruptions: Mapping[str, Sequence[float]] = CORRUPTIONS,
                     seed: int = 0) -> list[dict]:
    """Rows {corruption, level, accuracy, macro_f1, drop_vs_clean}, the clean row first.

    `labels` index `class_names`, the classes `predictor.predict` scores (wrap a model with
    `folder.MappedPredictor` to score another taxonomy). Image i gets noise seed `seed + i`
    at every level, so the curves differ only by the level.
    """
    def score(imgs: Sequence[np.ndarray]) -> tuple[float, float]:
        pred = predictor.predict(imgs).argmax(axis=1)
        m = classification_metrics(labels, pred, class_names)
        return m["accuracy"], m["macro_f1"]

    clean_acc, clean_f1 = score(images)
    rows = [{"corruption": "clean", "level": 0.0, "accuracy": clean_acc, "macro_f1": clean_f1,
             "drop_vs_clean": 0.0}]
    for kind, levels in corruptions.items():
        for level in levels:
            acc, f1 = score([corrupt(img, kind, level, seed + i) for i, img in enumerate(images)])
            rows.append({"corruption": kind, "level": float(level), "accuracy": acc,
                         "macro_f1": f1, "drop_vs_clean": clean_acc - acc})
    return rows


def robustness_figure(table: Sequence[Mapping]):
    """Accuracy against level, one panel per corruption, the clean accuracy dashed."""
    from pipeline.evaluate.plots import plt

    clean = next(r["accuracy"] for r in table if r["corruption"] == "clean")
    kinds = list(dict.fromkeys(r["corruption"] for r in table if r["corruption"] != "clean"))
    fig, axes = plt.subplots(1, max(1, len(kinds)), figsize=(2.6 * max(1, len(kinds)), 2.8),
                             sharey=True, squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=False):
        rows = [r for r in table if r["corruption"] == kind]
        ax.plot([r["level"] for r in rows], [r["accuracy"] for r in rows], "o-", color="#1f5fa8")
        ax.axhline(clean, ls="--", lw=1, color="#888888")
        ax.set_title(kind, fontsize=10)
        ax.set_xlabel("level", fontsize=9)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy")
    fig.tight_layout()
    return fig
