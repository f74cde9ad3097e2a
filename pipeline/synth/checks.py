"""Checks that the synthetic data is what it claims: LER recovery, noise model, shortcut audit."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from pipeline.synth.imaging import detector_noise
from pipeline.synth.patterns import LineLayout
from pipeline.synth.rng import make_rng
from pipeline.synth.roughness import paired_edges


def _acf_length(res: np.ndarray) -> float:
    """Lag (px) where the mean edge autocorrelation falls to 1/e (interpolated)."""
    n = res.shape[1]
    f = np.fft.rfft(res, 2 * n, axis=1)
    acf = np.fft.irfft(np.abs(f) ** 2, axis=1)[:, :n].mean(0)
    acf /= acf[0]
    k = int(np.argmax(acf < np.exp(-1)))
    return float(k - 1 + (acf[k - 1] - np.exp(-1)) / (acf[k - 1] - acf[k]))


def ler_recovery(three_sigma_nm: float = 7.5, xi_nm: float = 35.0, alpha: float = 0.5,
                 nm_per_px: float = 1.0, length: int = 1024, n_lines: int = 24,
                 blur_px: float = 1.0, seed: int = 0) -> dict:
    """Render rough lines, extract edges at half height, compare 3-sigma and xi to the input.

    Alpha 0.5 is an exponential ACF, whose 1/e lag is exactly xi.
    """
    rng = make_rng(seed, "ler_recovery")
    pitch, cd = 40.0, 20.0
    le, re = paired_edges(rng, n_lines, length, three_sigma_nm / 3 / nm_per_px,
                          xi_nm / nm_per_px, alpha, 0.0)
    centers = (pitch * (np.arange(n_lines) + 1))[:, None]
    width = int(pitch * (n_lines + 2))
    lay = LineLayout(width, width, 0.0, pitch, cd, (centers - cd / 2 + le).astype(np.float32),
                     (centers + cd / 2 + re).astype(np.float32), np.ones_like(le), 1.0, 0.0, 0.0,
                     np.zeros((width, width), np.float32), nm_per_px, {})
    lay.left = np.pad(lay.left, ((0, 0), (0, width - length)), mode="edge")
    lay.right = np.pad(lay.right, ((0, 0), (0, width - length)), mode="edge")
    lay.hfac = np.ones_like(lay.left)
    img = cv2.GaussianBlur(lay.raster().height[:length], (0, 0), blur_px)
    edges = []
    for k in range(n_lines):
        for nominal, rising in ((centers[k, 0] - cd / 2, True), (centers[k, 0] + cd / 2, False)):
            x0 = int(nominal - pitch / 4)
            seg = img[:, x0 : x0 + int(pitch / 2)]
            s = seg if rising else 1 - seg
            i = np.argmax(s >= 0.5, axis=1)
            i = np.clip(i, 1, seg.shape[1] - 1)
            a, b = s[np.arange(length), i - 1], s[np.arange(length), i]
            edges.append(x0 + i - 1 + (0.5 - a) / np.maximum(b - a, 1e-6) - 0.5)
    res = np.array(edges)
    res -= res.mean(1, keepdims=True)
    est_3s = float(3 * res.std() * nm_per_px)
    est_xi = _acf_length(res) * nm_per_px
    return {"three_sigma_in": three_sigma_nm, "three_sigma_est": est_3s,
            "three_sigma_rel_err": est_3s / three_sigma_nm - 1, "xi_in": xi_nm,
            "xi_est": est_xi, "xi_rel_err": est_xi / xi_nm - 1, "alpha": alpha}


def noise_vs_mean(dose: float = 20.0, frames: int = 8, read_sigma: float = 0.01,
                  row_sigma: float = 0.0, size: int = 128, seed: int = 0) -> dict:
    """Fit variance vs mean on flat fields: slope 1/dose for one frame, /frames when averaged."""
    rng = make_rng(seed, "noise_vs_mean")
    means = np.linspace(0.2, 2.0, 8)
    var1, varn = [], []
    for m in means:
        flat = np.full((size, size), m, np.float32)
        var1.append(detector_noise(flat, dose, 1, read_sigma, row_sigma, rng).var())
        varn.append(detector_noise(flat, dose, frames, read_sigma, row_sigma, rng).var())
    s1, i1 = np.polyfit(means, var1, 1)
    sn, _ = np.polyfit(means, varn, 1)
    return {"slope_1frame": float(s1), "expected_slope": 1.0 / dose,
            "intercept_1frame": float(i1), "expected_intercept": read_sigma**2 + row_sigma**2,
            "slope_nframes": float(sn), "frames": frames,
            "var_ratio": float(np.mean(var1) / np.mean(varn))}


def _features(img: np.ndarray) -> np.ndarray:
    x = img.astype(np.float32)
    pct = np.percentile(x, [1, 5, 25, 50, 75, 95, 99])
    hist = np.histogram(x, bins=16, range=(0, 256))[0] / x.size
    f = np.abs(np.fft.fftshift(np.fft.fft2(x - x.mean()))) ** 2
    n = x.shape[0]
    yy, xx = np.mgrid[0:n, 0:n] - n // 2
    r = np.hypot(yy, xx)
    bands = [f[(r >= lo) & (r < hi)].sum() for lo, hi in
             ((1, 3), (3, 6), (6, 12), (12, 24), (24, 48), (48, 90))]
    bands = np.log(np.array(bands) + 1) - np.log(f.sum() + 1)
    return np.concatenate([[x.mean(), x.std()], pct, hist, bands])


def shortcut_audit(rows: list[dict], images_root: Path, max_per_class: int = 200,
                   folds: int = 5, seed: int = 0) -> dict:
    """Logistic regression on global image statistics, and on images with the defect in-painted.

    Accuracy well above chance means the class is readable from global statistics (context or
    imaging), not only from the defect itself.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    root = Path(images_root)
    by_class: dict[str, list[dict]] = {}
    for r in sorted(rows, key=lambda r: r["id"]):
        by_class.setdefault(r["fine_class"], []).append(r)
    feats, feats_masked, labels = [], [], []
    kernel = np.ones((7, 7), np.uint8)
    for cls, grp in sorted(by_class.items()):
        for r in grp[:max_per_class]:
            img = cv2.imread(str(root / r["path"]), cv2.IMREAD_GRAYSCALE)
            mask = cv2.imread(str(root / r["mask_path"]), cv2.IMREAD_GRAYSCALE)
            feats.append(_features(img))
            painted = cv2.inpaint(img, cv2.dilate(mask, kernel), 3, cv2.INPAINT_TELEA)
            feats_masked.append(_features(painted))
            labels.append(cls)
    y = np.array(labels)
    counts = np.unique(y, return_counts=True)[1]
    k = int(min(folds, counts.min()))
    cv = StratifiedKFold(k, shuffle=True, random_state=seed)

    def acc(x: list[np.ndarray]) -> float:
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
        return float(cross_val_score(model, np.array(x), y, cv=cv).mean())

    return {"n": int(len(y)), "classes": int(len(counts)),
            "chance": float(counts.max() / len(y)), "uniform_chance": 1.0 / len(counts),
            "acc_global_stats": acc(feats), "acc_defect_inpainted": acc(feats_masked)}
