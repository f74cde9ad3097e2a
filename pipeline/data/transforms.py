"""Class-agnostic augmentations suited to SEM images (albumentations on uint8 (H, W)).

SEM images have no preferred orientation, so 90° rotations and flips are free; small affine
jitter, focus blur, detector noise, brightness gamma and resampling mimic tool-to-tool
variation. None of them depends on the class, so no augmentation can create or erase a defect
cue on purpose. Randomness comes from the dataset, which seeds the pipeline per sample.
"""

from __future__ import annotations

import albumentations as A
import cv2

from pipeline.errors import UserError

# Probability of each augmentation; "enabled": false turns all of them off.
DEFAULTS: dict[str, float | bool] = {
    "enabled": True,
    "p_rot90": 0.5,
    "p_hflip": 0.5,
    "p_vflip": 0.5,
    "p_affine": 0.3,
    "p_blur": 0.2,
    "p_noise": 0.2,
    "p_gamma": 0.3,
    "p_downscale": 0.1,
}


def build_augment(cfg: dict, image_size: int) -> A.Compose | None:
    """The training augmentation pipeline from `cfg` (keys of DEFAULTS), or None if disabled."""
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise UserError(f"augment: unknown keys {unknown}; allowed keys are {sorted(DEFAULTS)}")
    c = {**DEFAULTS, **cfg}
    if not c["enabled"]:
        return None
    for key, p in c.items():
        if key != "enabled" and not 0.0 <= float(p) <= 1.0:
            raise UserError(f"augment.{key} must be a probability in [0, 1], got {p}")
    # Blur strength relative to the image: ~1 px sigma at 128 px.
    max_sigma = max(0.5, image_size / 128)
    return A.Compose(
        [
            A.RandomRotate90(p=c["p_rot90"]),
            A.HorizontalFlip(p=c["p_hflip"]),
            A.VerticalFlip(p=c["p_vflip"]),
            A.Affine(
                scale=(0.9, 1.1),
                translate_percent=(-0.05, 0.05),
                rotate=(-10, 10),
                border_mode=cv2.BORDER_REFLECT_101,
                p=c["p_affine"],
            ),
            A.GaussianBlur(sigma_limit=(0.3, max_sigma), p=c["p_blur"]),
            A.GaussNoise(std_range=(0.01, 0.05), p=c["p_noise"]),
            A.RandomGamma(gamma_limit=(80, 120), p=c["p_gamma"]),
            A.Downscale(
                scale_range=(0.5, 0.9),
                p=c["p_downscale"],
                interpolation_pair={"downscale": cv2.INTER_AREA, "upscale": cv2.INTER_LINEAR},
            ),
        ]
    )
