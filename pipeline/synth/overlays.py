"""Nuisance content burned into real SEM images after acquisition, drawn the same way for
every class so that none of it tells a class apart: the tool's info bar (a dark band with
acquisition text and a scale bar), a bare scale bar, panel labels from papers ("(b)"), and
the corner watermark of AI-generated images. The defect mask follows the image (an info bar
squeezes the field and the mask above it); marks drawn over the field leave the mask as it is.
"""

from __future__ import annotations

import cv2
import numpy as np

from pipeline.synth.profiles import ToolProfile

FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_PLAIN, cv2.FONT_HERSHEY_DUPLEX)
WATERMARKS = ("AI", "Generated", "DALL-E", "stock", "sample", "©")


def _tone(rng: np.random.Generator, dark: bool) -> int:
    return int(rng.integers(0, 40)) if dark else int(rng.integers(215, 256))


def _text(img: np.ndarray, text: str, org: tuple[int, int], height_px: float, value: int,
          rng: np.random.Generator) -> None:
    font = FONTS[int(rng.integers(0, len(FONTS)))]
    scale = height_px / cv2.getTextSize("0", font, 1.0, 1)[0][1]
    cv2.putText(img, text, org, font, scale, value, 1, cv2.LINE_AA)


def _scale_bar(img: np.ndarray, x: int, y: int, length: int, thick: int, value: int,
               rng: np.random.Generator) -> None:
    """A bar with its length label above it ("500 nm")."""
    cv2.rectangle(img, (x, y), (x + length, y + thick), value, -1)
    label = f"{int(rng.choice([1, 2, 5, 10, 20, 50, 100, 200, 500]))} {rng.choice(['nm', 'µm'])}"
    _text(img, label.replace("µ", "u"), (x, y - max(thick, 2)), max(3.0, img.shape[0] / 32),
          value, rng)


def info_bar(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[
        np.ndarray, np.ndarray]:
    """The field squeezed into the rows above a dark (or light) acquisition band."""
    n = img.shape[0]
    h = max(int(rng.uniform(0.08, 0.18) * n), 6)
    field = cv2.resize(img, (n, n - h), interpolation=cv2.INTER_AREA)
    field_mask = cv2.resize(mask, (n, n - h), interpolation=cv2.INTER_NEAREST)
    dark = rng.random() < 0.8
    bar = np.full((h, n), _tone(rng, dark), np.uint8)
    ink = _tone(rng, not dark)
    fields = [f"{rng.uniform(0.5, 30):.1f}kV", f"WD {rng.uniform(2, 15):.1f}mm",
              f"x{int(rng.choice([5, 10, 20, 50, 100, 200]))}k", rng.choice(["SE", "InLens",
                                                                           "BSE", "SE2"])]
    rng.shuffle(fields)
    _text(bar, " ".join(fields[: int(rng.integers(2, 5))]), (2, int(h * 0.7)), h * 0.4, ink, rng)
    length = int(rng.uniform(0.1, 0.25) * n)
    _scale_bar(bar, n - length - 3, int(h * 0.65), length, max(h // 8, 1), ink, rng)
    return np.vstack([field, bar]), np.vstack([field_mask, np.zeros((h, n), np.uint8)])


def corner_marks(img: np.ndarray, rng: np.random.Generator, scale_bar: bool,
                 label: bool) -> np.ndarray:
    """A scale bar and/or a panel label drawn into corners of the field."""
    n = img.shape[0]
    out = img.copy()
    if scale_bar:
        length = int(rng.uniform(0.12, 0.3) * n)
        x = int(rng.uniform(0.03, 0.1) * n) if rng.random() < 0.5 else n - length - int(
            rng.uniform(0.03, 0.1) * n)
        y = n - int(rng.uniform(0.04, 0.1) * n)
        if rng.random() < 0.5:  # a backing box, as many tools draw it
            cv2.rectangle(out, (x - 2, y - n // 8), (x + length + 2, y + 4),
                          _tone(rng, True), -1)
        _scale_bar(out, x, y, length, max(n // 64, 1), _tone(rng, False), rng)
    if label:
        text = str(rng.choice(["(a)", "(b)", "(c)", "a", "b", "c", "1", "2", "A", "B"]))
        _text(out, text, (int(0.04 * n), int(rng.uniform(0.08, 0.14) * n)),
              rng.uniform(0.05, 0.09) * n, _tone(rng, rng.random() < 0.3), rng)
    return out


def watermark(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Faint text in a corner, blended, as AI image generators and stock sites leave it."""
    n = img.shape[0]
    layer = img.copy()
    x = int(rng.uniform(0.55, 0.75) * n) if rng.random() < 0.7 else int(0.03 * n)
    y = int(rng.uniform(0.9, 0.97) * n) if rng.random() < 0.7 else int(0.1 * n)
    _text(layer, str(rng.choice(WATERMARKS)), (x, y), rng.uniform(0.04, 0.07) * n,
          _tone(rng, rng.random() < 0.3), rng)
    alpha = rng.uniform(0.3, 0.8)
    return np.clip(alpha * layer.astype(np.float32) + (1 - alpha) * img, 0, 255).astype(np.uint8)


def smooth_render(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The plastic look of generated images: edge-preserving smoothing of noise and texture."""
    d = int(rng.choice([5, 7, 9]))
    return cv2.bilateralFilter(img, d, rng.uniform(25, 60), rng.uniform(3, 8))


def apply_overlays(img: np.ndarray, mask: np.ndarray, pr: ToolProfile,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict]:
    """The profile's nuisance content on an 8-bit image and its defect mask."""
    info = {"smoothed": bool(rng.random() < pr.smooth_p),
            "info_bar": bool(rng.random() < pr.info_bar_p),
            "scale_bar": bool(rng.random() < pr.scale_bar_p),
            "label": bool(rng.random() < pr.label_p),
            "watermark": bool(rng.random() < pr.watermark_p)}
    if info["smoothed"]:
        img = smooth_render(img, rng)
    if info["info_bar"]:
        img, mask = info_bar(img, mask, rng)
    if (info["scale_bar"] and not info["info_bar"]) or info["label"]:
        img = corner_marks(img, rng, info["scale_bar"] and not info["info_bar"], info["label"])
    if info["watermark"]:
        img = watermark(img, rng)
    return img, mask, info
