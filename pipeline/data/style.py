"""Restyle synthetic images toward real ones at training time, with unlabelled real images.

Two label-free transfers, each from one synthetic image and one real reference image of the
same size (uint8 (H, W)):
- "histogram": the grey levels are remapped so the image has the reference's histogram. The
  map is monotone, so every edge, defect and mask boundary stays where it was and keeps its
  sign; only contrast, brightness and tone curve change.
- "fda": Fourier domain adaptation (Yang & Soatto 2020): the low-frequency amplitude of the
  image's spectrum (a centred square of half-width `beta` x size) is replaced by the
  reference's, the phase is kept. That moves illumination, charging gradients and the coarse
  tone of the real tool onto the synthetic scene; structure (the phase, the high
  frequencies) is kept.
Neither looks at the class, so no transfer can create or erase a defect cue.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pipeline.data.images import read_gray8, to_model_input
from pipeline.errors import UserError

METHODS = ("histogram", "fda")


def match_histogram(image: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """`image` with the grey-level distribution of `reference` (monotone in `image`)."""
    ref_counts = np.bincount(reference.ravel(), minlength=256).astype(np.float64)
    ref_cdf = np.cumsum(ref_counts) / ref_counts.sum()
    counts = np.bincount(image.ravel(), minlength=256).astype(np.float64)
    # Mid-rank of each grey level, so a constant image maps to the reference's median.
    cdf = (np.cumsum(counts) - counts / 2) / counts.sum()
    lut = np.searchsorted(ref_cdf, cdf, side="left").clip(0, 255).astype(np.uint8)
    return lut[image]


def swap_low_frequencies(image: np.ndarray, reference: np.ndarray, beta: float) -> np.ndarray:
    """FDA: `image` with the centred (2b+1)^2 low-frequency amplitudes of `reference`,
    b = floor(beta * min(H, W)); its own phase. beta 0 returns the image unchanged."""
    if image.shape != reference.shape:
        raise ValueError(f"reference shape {reference.shape} != image shape {image.shape}")
    b = int(np.floor(beta * min(image.shape)))
    if b == 0:
        return image.copy()
    spectrum = np.fft.fftshift(np.fft.fft2(image.astype(np.float64)))
    ref_amplitude = np.abs(np.fft.fftshift(np.fft.fft2(reference.astype(np.float64))))
    amplitude, phase = np.abs(spectrum), np.angle(spectrum)
    cy, cx = image.shape[0] // 2, image.shape[1] // 2
    window = (slice(cy - b, cy + b + 1), slice(cx - b, cx + b + 1))
    amplitude[window] = ref_amplitude[window]
    out = np.fft.ifft2(np.fft.ifftshift(amplitude * np.exp(1j * phase))).real
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class StyleTransfer:
    """With probability `p` per image, one of `references` (uint8, the model's input size)
    restyles it by `method`. Randomness comes from the caller's generator (the dataset seeds
    one per sample), so a view is the same on every call."""

    references: Sequence[np.ndarray]
    method: str = "histogram"
    p: float = 0.5
    fda_beta: float = 0.05

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UserError(f"train.style.method={self.method!r} is unknown; use one of {METHODS}")
        if not self.references:
            raise UserError("style transfer needs at least one real reference image")

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        draw, pick = rng.random(), int(rng.integers(len(self.references)))
        if draw >= self.p:
            return image
        reference = self.references[pick]
        if reference.shape != image.shape:  # a batch served larger for an online teacher
            reference = cv2.resize(reference, image.shape[::-1], interpolation=cv2.INTER_AREA)
        if self.method == "histogram":
            return match_histogram(image, reference)
        return swap_low_frequencies(image, reference, self.fda_beta)


def pick_references(paths: Sequence[str], n: int, seed: int) -> list[str]:
    """Up to `n` of `paths`, a seeded draw without replacement, in a stable order."""
    if len(paths) <= n:
        return sorted(paths)
    rng = np.random.default_rng([seed, 5])
    return sorted(np.asarray(sorted(paths))[rng.choice(len(paths), n, replace=False)].tolist())


def style_from_config(style: Mapping, real_images: Sequence[str], image_size: int,
                      seed: int) -> StyleTransfer | None:
    """The `train.style` section as a StyleTransfer toward `real_images` (unlabelled real
    image paths) at `image_size`, or None when it is off or there is no real image: a phase
    without unlabelled real images trains as it would without style transfer."""
    if not style["enabled"] or not real_images:
        return None
    chosen = pick_references(real_images, style["references"], seed)
    return StyleTransfer([to_model_input(read_gray8(Path(p)), image_size) for p in chosen],
                         style["method"], style["p"], style["fda_beta"])
