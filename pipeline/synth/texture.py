"""Cheap texture fields: smooth noise, Voronoi grains, filler speckle."""

from __future__ import annotations

import cv2
import numpy as np


def smooth_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Zero-mean, unit-std smooth random field with about `cells` blobs across (cubic upsample)."""
    small = rng.standard_normal((cells + 3, cells + 3)).astype(np.float32)
    big = cv2.resize(small, (size + 2 * size // cells, size + 2 * size // cells),
                     interpolation=cv2.INTER_CUBIC)
    o = size // cells
    f = big[o : o + size, o : o + size]
    return (f - f.mean()) / (f.std() + 1e-6)


def grain_labels(rng: np.random.Generator, shape: tuple[int, int], cell_px: float) -> np.ndarray:
    """Voronoi grain labels (int32) with mean cell size cell_px, via a labelled distance map."""
    h, w = shape
    n = max(2, int(h * w / max(cell_px, 2.0) ** 2))
    seeds = np.ones((h, w), np.uint8)
    seeds[rng.integers(0, h, n), rng.integers(0, w, n)] = 0
    _, labels = cv2.distanceTransformWithLabels(seeds, cv2.DIST_L2, 3,
                                                labelType=cv2.DIST_LABEL_PIXEL)
    return labels


def grains(rng: np.random.Generator, shape: tuple[int, int], cell_px: float,
           contrast: float) -> tuple[np.ndarray, np.ndarray]:
    """(per-grain yield factor around 1, boundary map 0/1) for a grain texture."""
    labels = grain_labels(rng, shape, cell_px)
    vals = (1.0 + contrast * rng.standard_normal(labels.max() + 1)).astype(np.float32)
    fac = vals[labels]
    edge = np.zeros(shape, np.float32)
    edge[:, 1:] += labels[:, 1:] != labels[:, :-1]
    edge[1:, :] += labels[1:, :] != labels[:-1, :]
    return fac, np.minimum(edge, 1.0)


def speckle(rng: np.random.Generator, shape: tuple[int, int], density: float,
            r_px: tuple[float, float]) -> np.ndarray:
    """0..1 map of random filler disks (mould compound, IMC specks)."""
    h, w = shape
    out = np.zeros(shape, np.uint8)
    n = int(density * h * w / max(np.mean(r_px) ** 2 * 3.14, 1.0))
    xs, ys = rng.uniform(0, w, n), rng.uniform(0, h, n)
    rs = rng.uniform(r_px[0], r_px[1], n)
    vs = rng.integers(120, 256, n)
    for x, y, r, v in zip(xs, ys, rs, vs, strict=False):
        cv2.circle(out, (int(x * 16), int(y * 16)), max(int(r * 16), 8), int(v), -1,
                   cv2.LINE_AA, shift=4)
    return out.astype(np.float32) / 255.0
