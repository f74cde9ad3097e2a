"""The SEM imaging model, applied identically to every scene whatever its class."""

from __future__ import annotations

import cv2
import numpy as np

from pipeline.synth.patterns import Scene
from pipeline.synth.profiles import ToolProfile
from pipeline.synth.rng import pick
from pipeline.synth.texture import smooth_field


def _dist(binary: np.ndarray) -> np.ndarray:
    return cv2.distanceTransform(binary.astype(np.uint8), cv2.DIST_L2, 3)


def _edge_terms(h: np.ndarray, thr: float, lam: float, a: float, bloom: float, foot: float,
                lam_f: float) -> np.ndarray:
    """a*exp(-d/lambda) inside, weaker blooming outside, dark foot at the base."""
    b = h > thr
    if b.all() or not b.any():
        return np.zeros_like(h)
    d_in, d_out = _dist(b), _dist(~b)
    return np.where(b, a * np.exp(-d_in / lam),
                    bloom * np.exp(-d_out / lam) - foot * np.exp(-d_out / lam_f))


def _kernel(sx: float, sy: float, theta: float) -> np.ndarray:
    """Gaussian beam kernel with astigmatism (elliptic, rotated)."""
    r = int(np.ceil(3 * max(sx, sy))) + 1
    y, x = np.mgrid[-r : r + 1, -r : r + 1].astype(np.float32)
    c, s = np.cos(theta), np.sin(theta)
    u, v = c * x + s * y, -s * x + c * y
    k = np.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2))
    return (k / k.sum()).astype(np.float32)


def se_signal(sc: Scene, pr: ToolProfile, rng: np.random.Generator, ss: int) -> tuple[
        np.ndarray, dict]:
    """Noise-free detector signal at the supersampled resolution."""
    s = sc.height.shape[0]
    nmpp = sc.nm_per_px
    lam = max(pick(rng, pr.edge_lambda_nm) / nmpp, 0.6 * ss / 2)
    a, bloom, foot = pick(rng, pr.edge_gain), pick(rng, pr.bloom), pick(rng, pr.foot)
    kslope, asym = pick(rng, pr.slope_gain), pick(rng, pr.asym)
    h = sc.height.astype(np.float32)
    hs = cv2.GaussianBlur(h, (0, 0), lam)
    gx = cv2.Sobel(hs, cv2.CV_32F, 1, 0, ksize=3) / 8.0
    gy = cv2.Sobel(hs, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    norm = lam * np.sqrt(2 * np.pi)  # a unit step then peaks at slope 1
    slope = np.sqrt(gx * gx + gy * gy) * norm
    yld = sc.yld.astype(np.float32)
    sig = yld * (1.0 + kslope * np.minimum(slope, 3.0))
    sig = sig + _edge_terms(h, 0.5, lam, a, bloom, foot, 2 * lam)
    sig = sig + _edge_terms(h, -0.5, lam, a, bloom, foot, 2 * lam)
    sig = sig + 0.5 * a * np.clip(h - 1.0, 0, None) * (h > 1.2)  # tall objects emit more
    phi = rng.uniform(0, 2 * np.pi)
    if asym > 0:
        shade = (gx * np.cos(phi) + gy * np.sin(phi)) * norm
        sig = sig * (1.0 + asym * np.clip(shade, -2, 2))
        if pr.detector == "side":  # shadow cast away from the detector by tall features
            sh = 3 * lam
            m = np.float32([[1, 0, -np.cos(phi) * sh], [0, 1, -np.sin(phi) * sh]])
            shifted = cv2.warpAffine(hs, m, (s, s), borderMode=cv2.BORDER_REPLICATE)
            sig = sig * (1.0 - 0.5 * asym * np.clip(shifted - hs, 0, 1.5))
    if pr.detector == "bse":  # material contrast dominates, weak edges
        sig = 0.3 * sig + 0.7 * np.clip(yld, 0, None) ** 1.3
    inverted = bool(rng.random() < pr.invert_p)
    if inverted:
        sig = float(sig.max() + sig.min()) - sig
    sig = np.clip(sig, 0.01, None).astype(np.float32)
    return sig, {"edge_lambda_px": lam, "edge_gain": a, "slope_gain": kslope, "asym": asym,
                 "det_angle": phi, "inverted": inverted}


def optics(sig: np.ndarray, sc: Scene, pr: ToolProfile, rng: np.random.Generator,
           ss: int) -> tuple[np.ndarray, dict]:
    """Beam blur (astigmatic, defocus, tail), background, charging."""
    s = sig.shape[0]
    sigma = max(pick(rng, pr.blur_nm) / sc.nm_per_px, pick(rng, pr.blur_floor_px) * ss)
    defocus = bool(rng.random() < pr.defocus_p)
    if defocus:
        sigma *= rng.uniform(1.8, 3.5)
    ratio = pick(rng, pr.astig)
    k = _kernel(sigma * np.sqrt(ratio), sigma / np.sqrt(ratio), rng.uniform(0, np.pi))
    out = cv2.filter2D(sig, -1, k, borderType=cv2.BORDER_REFLECT)
    tail = pick(rng, pr.tail)
    if tail > 0:
        out = (1 - tail) * out + tail * cv2.GaussianBlur(out, (0, 0), 8 * sigma + 2)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s - 0.5
    wave = pick(rng, pr.wave) * smooth_field(rng, s, int(rng.integers(2, 5)))
    vig = pick(rng, pr.vignette)
    grad = rng.normal(0, 0.05, 2)
    out = out * (1 + wave) * (1 - vig * (xx**2 + yy**2) * 2) * (1 + grad[0] * xx + grad[1] * yy)
    charging = bool(rng.random() < pr.charging_p)
    info = {"blur_px": sigma, "astig": ratio, "defocus": defocus, "charging": charging}
    if charging:
        c = pick(rng, pr.charging)
        halo = cv2.GaussianBlur(sc.insul.astype(np.float32), (0, 0), rng.uniform(3, 12) * ss)
        klen = int(rng.uniform(6, 30) * ss) | 1
        kern = np.zeros((1, klen), np.float32)
        kern[0, klen // 2 :] = np.exp(-np.arange(klen - klen // 2) / (klen / 4))
        streak = cv2.filter2D(np.ascontiguousarray(sc.insul * (sig > np.median(sig)), np.float32), -1,
                              kern / kern.sum())
        mean = float(out.mean())
        out = out + c * mean * (0.8 * halo + 0.6 * streak)
        out = out * (1 - 0.5 * c * halo) + 0.5 * c * halo * mean  # local contrast loss
        out = out * (1 + c * rng.uniform(-0.5, 0.5) * (yy + 0.5))  # frame ramp
        info["charging_strength"] = c
    return np.clip(out, 1e-3, None).astype(np.float32), info


def detector_noise(sig: np.ndarray, dose: float, frames: int, read_sigma: float,
                   row_sigma: float, rng: np.random.Generator, gamma: bool = False,
                   frame_images: list[np.ndarray] | None = None) -> np.ndarray:
    """Average of `frames` noisy frames: Poisson (or Gamma) counts + read noise + row noise.

    Variance of the result = mean/(dose*frames) + (read^2 + row^2)/frames.
    """
    acc = np.zeros(sig.shape, np.float64)
    for f in range(frames):
        img = sig if frame_images is None else frame_images[f]
        lam = np.clip(img, 0, None) * dose
        counts = rng.gamma(np.maximum(lam, 1e-6), 1.0) if gamma else rng.poisson(lam)
        acc += counts / dose + rng.normal(0, read_sigma, sig.shape)
        acc += rng.normal(0, row_sigma, (sig.shape[0], 1))
    return (acc / frames).astype(np.float32)


def scan_frames(sig: np.ndarray, pr: ToolProfile, rng: np.random.Generator, ss: int,
                out: int, frames: int) -> tuple[list[np.ndarray], dict]:
    """Each frame with its own raster jitter (vibration, drift, shifted lines), area-downsampled."""
    s = sig.shape[0]
    vib, drift = pick(rng, pr.vibration_px) * ss, pick(rng, pr.drift_px) * ss
    rows = np.arange(s, dtype=np.float32)
    g = np.arange(s, dtype=np.float32)
    res = []
    for _ in range(frames):
        dx = np.zeros(s, np.float32)
        for _k in range(3):
            dx += vib / 3 * np.sin(2 * np.pi * rows / s * rng.uniform(2, 40) + rng.uniform(0, 6))
        dx += drift * (rows / s - 0.5) + rng.normal(0, 0.1 * ss)
        if rng.random() < pr.shifted_lines_p:
            i = int(rng.integers(0, s - 4))
            dx[i : i + int(rng.integers(1, 4)) * ss] += rng.uniform(-2, 2) * ss
        mx = g[None, :] + dx[:, None]
        my = np.broadcast_to(g[:, None], (s, s))
        warped = cv2.remap(sig, mx, np.ascontiguousarray(my), cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REFLECT)
        res.append(cv2.resize(warped, (out, out), interpolation=cv2.INTER_AREA))
    return res, {"vibration_px": vib / ss, "drift_px": drift / ss}


def display(img: np.ndarray, pr: ToolProfile, rng: np.random.Generator) -> tuple[np.ndarray,
                                                                                 dict]:
    """Brightness/contrast/gamma, auto-contrast (<= 0.3 % saturated), 8 bit, JPEG, resampling."""
    clip = rng.uniform(0.0, 0.15)
    lo, hi = np.percentile(img, [clip, 100 - clip])
    x = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)
    gam = pick(rng, pr.gamma)
    x = x**gam
    t_lo, t_hi = rng.uniform(0, 40), rng.uniform(200, 255)
    u8 = np.clip(np.rint(t_lo + x * (t_hi - t_lo)), 0, 255).astype(np.uint8)
    info = {"gamma": gam, "clip_pct": clip, "jpeg_q": 0, "resample": 1.0}
    n = u8.shape[0]
    if rng.random() < pr.resample_p:  # the real sets were resized, some up from small crops
        f = pick(rng, pr.resample)
        m = max(int(n * f), 8)
        small = cv2.resize(u8, (m, m), interpolation=cv2.INTER_AREA)
        u8 = cv2.resize(small, (n, n), interpolation=[cv2.INTER_LINEAR, cv2.INTER_CUBIC][
            int(rng.integers(0, 2))])
        info["resample"] = m / n
    if rng.random() < pr.jpeg_p:
        q = int(pick(rng, pr.jpeg_quality))
        ok, buf = cv2.imencode(".jpg", u8, [cv2.IMWRITE_JPEG_QUALITY, q])
        u8 = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
        info["jpeg_q"] = q
    return u8, info


def image_scene(sc: Scene, pr: ToolProfile, rng: np.random.Generator, ss: int,
                out: int) -> tuple[np.ndarray, dict]:
    """Full imaging chain from a supersampled scene to an 8-bit output image."""
    sig, p1 = se_signal(sc, pr, rng, ss)
    sig, p2 = optics(sig, sc, pr, rng, ss)
    frames = int(rng.choice(pr.frames))
    imgs, p3 = scan_frames(sig, pr, rng, ss, out, frames)
    # dose is in electrons at unit yield; scale so the mean signal sets the count level
    scale = 1.0 / float(np.mean(imgs[0]))
    dose = pick(rng, pr.dose)
    gamma = bool(rng.random() < pr.gamma_noise_p)
    noisy = detector_noise(imgs[0] * scale, dose, frames, pick(rng, pr.read_sigma),
                           pick(rng, pr.row_sigma), rng, gamma,
                           [f * scale for f in imgs])
    u8, p4 = display(noisy, pr, rng)
    return u8, {**p1, **p2, **p3, **p4, "frames": frames, "dose": dose, "gamma_noise": gamma}
