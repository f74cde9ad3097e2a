"""Defect constructions: layout-level (edit edges / vias / columns) and scene-level (draw on maps).

`apply_defect` returns the defective scene; the mask is the difference to the clean scene.
"""

from __future__ import annotations

import cv2
import numpy as np

from pipeline.synth.patterns import SUB, ColumnLayout, LineLayout, Scene, ViaLayout
from pipeline.synth.roughness import paired_edges
from pipeline.synth.texture import smooth_field


def _bump(n: int, y0: float, half: float, power: float = 4.0) -> np.ndarray:
    """Super-Gaussian bump along a line: flat top, rounded ends."""
    y = np.arange(n, dtype=np.float32)
    return np.exp(-(np.abs(y - y0) / max(half, 0.5)) ** power).astype(np.float32)


def _visible_line(lay: LineLayout, rng: np.random.Generator) -> tuple[int, float]:
    """A line index and a row that land inside the visible crop after rotation."""
    c, s = lay.canvas, lay.size
    lo, hi = (c - s) / 2 + 0.15 * s, (c + s) / 2 - 0.15 * s
    if lay.angle in (0.0, 90.0):
        lo, hi = 0.15 * s, 0.85 * s
    centers = (lay.left[:, 0] + lay.right[:, 0]) / 2
    ks = np.flatnonzero((centers > lo) & (centers < hi - lay.pitch))
    return int(rng.choice(ks)), float(rng.uniform(lo, hi))


def line_bridge(lay: LineLayout, rng: np.random.Generator) -> dict:
    k, y0 = _visible_line(lay, rng)
    variant = str(rng.choice(["body", "micro", "kissing"], p=[0.5, 0.25, 0.25]))
    gap = float(np.median(lay.left[k + 1] - lay.right[k]))
    half = {"body": rng.uniform(0.3, 3.0), "micro": rng.uniform(0.2, 0.6),
            "kissing": rng.uniform(2.0, 6.0)}[variant] * lay.cd / 2
    b = _bump(lay.canvas, y0, half, 2.0 if variant == "kissing" else 4.0)
    reach = gap * (0.6 if variant != "micro" else 0.56)
    lay.right[k] += reach * b
    lay.left[k + 1] -= reach * b
    return {"defect": "bridge", "variant": variant, "half_len_px": half}


def line_open(lay: LineLayout, rng: np.random.Generator) -> dict:
    k, y0 = _visible_line(lay, rng)
    variant = str(rng.choice(["cut", "pinch", "partial"], p=[0.55, 0.25, 0.2]))
    half = rng.uniform(0.15, 2.0) * lay.cd
    b = _bump(lay.canvas, y0, half)
    if variant == "partial":
        lay.hfac[k] *= 1 - rng.uniform(0.5, 0.75) * b
    else:
        neck = 0.6 if variant == "cut" else rng.uniform(0.25, 0.42)
        lay.left[k] += neck * lay.cd * b
        lay.right[k] -= neck * lay.cd * b
    return {"defect": "open", "variant": variant, "half_len_px": half}


def line_ler(lay: LineLayout, rng: np.random.Generator) -> dict:
    n = lay.left.shape[0]
    if rng.random() < 0.5:
        ks = np.arange(n)
    else:
        k, _ = _visible_line(lay, rng)
        w = int(rng.integers(1, 5))
        ks = np.arange(max(k - w, 0), min(k + w + 1, n))
    # total 3-sigma as a fraction of CD so the defect is visible at every magnification
    three_sigma = rng.uniform(0.18, 0.4) * lay.cd
    xi = max(rng.uniform(5, 40) / lay.nm_per_px, 1.5)
    alpha = rng.uniform(0.3, 1.0)
    le, re = paired_edges(rng, len(ks), lay.canvas, three_sigma / 3, xi, alpha,
                          rng.uniform(-0.2, 0.5))
    lay.left[ks] += le
    lay.right[ks] += re
    return {"defect": "ler", "ler_def_3sigma_nm": three_sigma * lay.nm_per_px,
            "ler_def_xi_nm": xi * lay.nm_per_px, "ler_def_alpha": alpha, "lines": len(ks)}


def line_collapse(lay: LineLayout, rng: np.random.Generator) -> dict:
    k, y0 = _visible_line(lay, rng)
    m = int(rng.integers(1, 4))
    b = _bump(lay.canvas, y0, rng.uniform(1.0, 5.0) * lay.pitch, 2.0)
    for j in range(k, min(k + m, lay.left.shape[0] - 1)):
        shift = lay.pitch * rng.uniform(0.5, 0.9) * b
        lay.left[j] += shift
        lay.right[j] += shift
    return {"defect": "collapse", "lines": m}


def _visible_vias(lay: ViaLayout, rng: np.random.Generator, n: int) -> np.ndarray:
    s = lay.size
    ok = np.flatnonzero((lay.cx > 0.15 * s) & (lay.cx < 0.85 * s) & (lay.cy > 0.15 * s)
                        & (lay.cy < 0.85 * s))
    return rng.choice(ok, size=min(n, len(ok)), replace=False)


def via_top_defect(lay: ViaLayout, rng: np.random.Generator) -> dict:
    variant = str(rng.choice(["missing", "merged", "malformed", "undersize", "oversize",
                              "misplaced", "partial"]))
    idx = _visible_vias(lay, rng, int(rng.integers(1, 4)))
    for i in idx:
        r = (lay.rx[i] + lay.ry[i]) / 2
        if variant == "missing":
            lay.value[i] = 0
        elif variant == "merged":
            d = np.hypot(lay.cx - lay.cx[i], lay.cy - lay.cy[i])
            d[i] = np.inf
            lay.links.append((int(i), int(np.argmin(d)), r * rng.uniform(1.0, 1.8)))
        elif variant == "malformed":
            th = np.linspace(0, 2 * np.pi, 24, endpoint=False)
            rr = r * (1 + 0.35 * smooth_field(rng, 24, 4)[0] * rng.uniform(0.6, 1.2))
            rr = np.maximum(rr * rng.uniform(0.8, 1.4), 0.3 * r)
            lay.polys.append(np.stack([lay.cx[i] + rr * np.cos(th) * rng.uniform(1, 1.6),
                                       lay.cy[i] + rr * np.sin(th)], 1))
            lay.value[i] = 0
        elif variant in ("undersize", "oversize"):
            f = rng.uniform(0.3, 0.6) if variant == "undersize" else rng.uniform(1.35, 1.7)
            lay.rx[i] *= f
            lay.ry[i] *= f
        elif variant == "misplaced":
            a = rng.uniform(0, 2 * np.pi)
            lay.cx[i] += np.cos(a) * lay.pitch * rng.uniform(0.25, 0.45)
            lay.cy[i] += np.sin(a) * lay.pitch * rng.uniform(0.25, 0.45)
        else:
            lay.value[i] = rng.uniform(0.3, 0.6)
    return {"defect": "via", "variant": variant, "count": len(idx)}


def via_cross_defect(lay: ColumnLayout, rng: np.random.Generator) -> dict:
    s = lay.size
    def height(c: dict) -> float:
        return min(c["y1"], s) - max(c["y0"], 0)

    ok = [i for i, c in enumerate(lay.cols) if 0.1 * s < c["x"] < 0.9 * s
          and height(c) > 0.15 * s]
    # Interconnect vias are short: any visible one, else the tallest.
    ok = ok or [i for i, c in enumerate(lay.cols) if 0.1 * s < c["x"] < 0.9 * s
                and height(c) > 0.04 * s] or [max(range(len(lay.cols)),
                                                  key=lambda k: height(lay.cols[k]))]
    i = int(rng.choice(ok))
    c = lay.cols[i]
    partners = [k for k in range(len(lay.cols)) if k != i and lay.cols[k]["y0"] == c["y0"]]
    variant = str(rng.choice(["void", "missing", "partial", "misplaced", "malformed"]
                             + (["merged"] if partners else [])))
    y0, y1 = max(c["y0"], 0.0), min(c["y1"], float(s))
    if variant == "void":
        w = min(c["w0"], c["w1"])
        lay.voids.append((c["x"], rng.uniform(y0 + 0.3 * (y1 - y0), y1 - 0.2 * (y1 - y0)),
                          w * rng.uniform(0.15, 0.35), (y1 - y0) * rng.uniform(0.08, 0.3)))
    elif variant == "missing":
        c["value"] = 0.0
    elif variant == "partial":
        c["fill"] = rng.uniform(0.2, 0.7)
    elif variant == "misplaced":
        c["shift"] = c["w0"] * rng.uniform(0.4, 0.8) * rng.choice([-1, 1])
    elif variant == "merged":
        j = min(partners, key=lambda k: abs(lay.cols[k]["x"] - c["x"]))
        yb = rng.uniform(y0 + 0.2 * (y1 - y0), y1 - 0.2 * (y1 - y0))
        hb = (y1 - y0) * rng.uniform(0.08, 0.3)
        lay.caps.append((min(c["x"], lay.cols[j]["x"]), max(c["x"], lay.cols[j]["x"]), yb,
                         yb + hb))
    else:
        f = rng.uniform(1.5, 2.2)
        c["w0"], c["w1"] = (c["w0"] * f, c["w1"]) if rng.random() < 0.5 else (c["w0"],
                                                                              c["w1"] * f)
    return {"defect": "via", "variant": variant}


# --------------------------------------------------------------------------- scene-level
def _grid(s: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:s, 0:s]
    return yy.astype(np.float32), xx.astype(np.float32)


def particle(sc: Scene, rng: np.random.Generator) -> dict:
    s = sc.height.shape[0]
    yy, xx = _grid(s)
    n = int(rng.integers(1, 5)) if rng.random() < 0.35 else 1
    c0 = rng.uniform(0.2, 0.8, 2) * s
    elong = rng.uniform(1.0, 2.5)
    # Real review images frame the particle: at least ~5 output px across, at most a quarter field.
    r0 = float(np.clip(rng.uniform(5, 150) / sc.nm_per_px, 0.04 * s, 0.22 * s))
    large = bool(rng.random() < 0.2)  # real review images often show one large, bright one
    if large:
        n, r0 = 1, float(rng.uniform(0.12, 0.25) * s)
    h0 = rng.uniform(1.5, 3.0)
    z = np.zeros_like(sc.height)
    for _ in range(n):
        c = c0 + rng.normal(0, r0, 2) * (n > 1)
        r = r0 * rng.uniform(0.5, 1.0) if n > 1 else r0
        th = np.arctan2(yy - c[1], xx - c[0])
        wob = 1 + 0.25 * sum(rng.normal(0, 1) * np.sin(m * th + rng.uniform(0, 6))
                             for m in (2, 3, 5)) / 3
        ca, sa = np.cos(a := rng.uniform(0, np.pi)), np.sin(a)
        u, v = (xx - c[0]) * ca + (yy - c[1]) * sa, -(xx - c[0]) * sa + (yy - c[1]) * ca
        d = np.hypot(u / elong, v) / (r * wob)
        z = np.maximum(z, h0 * np.sqrt(np.clip(1 - d**2, 0, 1)))
    z = z * (1 + 0.3 * smooth_field(rng, s, int(rng.integers(30, 80))))  # rough surface
    inside = z > 0.02
    tex = 1 + 0.15 * smooth_field(rng, s, 40)
    sc.height = np.maximum(sc.height, z + sc.height * inside)
    bright = rng.uniform(0.8, 1.4) if large else rng.uniform(0.5, 1.2)
    sc.yld = np.where(inside, bright * tex, sc.yld).astype(np.float32)
    insul = float(rng.random() < 0.5)
    sc.insul = np.where(inside, insul, sc.insul).astype(np.float32)
    return {"defect": "particle", "blobs": n, "radius_px": r0, "insulating": insul,
            "large": large}


def _walk(rng: np.random.Generator, s: int, start: np.ndarray, heading: float, length: float,
          step: float, turn: float) -> np.ndarray:
    n = max(int(length / step), 2)
    hd = heading + np.cumsum(rng.normal(0, turn, n))
    hd = heading + 0.7 * (hd - heading)  # persistence: pull back toward the main heading
    pts = start + np.cumsum(np.stack([np.cos(hd), np.sin(hd)], 1) * step, 0)
    return np.vstack([start[None], pts])


def crack(sc: Scene, rng: np.random.Generator) -> dict:
    s = sc.height.shape[0]
    m = np.zeros((s, s), np.uint8)
    step = max(rng.uniform(2, 8) / sc.nm_per_px, rng.uniform(1.5, 4.0))
    turn = np.deg2rad(rng.uniform(10, 25))
    length = rng.uniform(0.3, 1.5) * s
    if sc.view == "cross" and rng.random() < 0.6:
        heading = rng.choice([0.0, np.pi]) + rng.normal(0, 0.2)
    else:
        heading = rng.uniform(0, 2 * np.pi)
    start = rng.uniform(0.15, 0.85, 2) * s - np.array([np.cos(heading), np.sin(heading)]) * (
        length * 0.3)
    width = rng.uniform(1.0, 6.0) * s / 128
    paths = [(_walk(rng, s, start, heading, length, step, turn), width)]
    for _ in range(int(rng.integers(0, 4))):
        p, w = paths[0]
        b = p[int(rng.integers(len(p) // 4, 3 * len(p) // 4 + 1))]
        hb = heading + rng.choice([-1, 1]) * rng.uniform(0.4, 1.1)
        paths.append((_walk(rng, s, b, hb, length * rng.uniform(0.1, 0.4), step, turn),
                      w * 0.5))
    for p, w in paths:
        taper = np.linspace(1.0, 0.2, len(p) - 1) ** 0.7
        for a, b, t in zip(p[:-1], p[1:], taper, strict=False):
            cv2.line(m, (int(a[0] * SUB), int(a[1] * SUB)), (int(b[0] * SUB), int(b[1] * SUB)),
                     255, max(int(round(w * t)), 1), cv2.LINE_AA, shift=4)
    f = m.astype(np.float32) / 255.0
    sc.height = sc.height * (1 - f) - 1.0 * f
    sc.yld = (sc.yld * (1 - 0.85 * f)).astype(np.float32)
    return {"defect": "crack", "length_px": length, "width_px": width, "branches": len(paths) - 1}


def scratch(sc: Scene, rng: np.random.Generator) -> dict:
    s = sc.height.shape[0]
    yy, xx = _grid(s)
    variant = str(rng.choice(["arc", "chord", "dashed", "chatter"], p=[0.35, 0.25, 0.15, 0.25]))
    p0 = rng.uniform(0.25, 0.75, 2) * s
    th = rng.uniform(0, np.pi)
    t = np.array([np.cos(th), np.sin(th)])
    nrm = np.array([-t[1], t[0]])
    along = (xx - p0[0]) * t[0] + (yy - p0[1]) * t[1]
    w = float(np.clip(rng.uniform(3, 25) / sc.nm_per_px, 1.5 * s / 128, 7 * s / 128))
    if variant == "chatter":
        core = np.zeros((s, s), np.uint8)
        n = int(rng.integers(3, 10))
        gap = rng.uniform(0.03, 0.08) * s
        rad = rng.uniform(0.04, 0.1) * s
        for i in range(n):
            c = p0 + t * (i - n / 2) * gap
            cv2.ellipse(core, (int(c[0] * SUB), int(c[1] * SUB)),
                        (int(rad * SUB), int(rad * 0.6 * SUB)), np.rad2deg(th), -60, 60, 255,
                        max(int(w * 0.7), 1), cv2.LINE_AA, shift=4)
        d = cv2.distanceTransform(255 - core, cv2.DIST_L2, 3)
        half = np.full_like(d, 0.5)
    else:
        if variant == "chord":
            d = np.abs((xx - p0[0]) * nrm[0] + (yy - p0[1]) * nrm[1])
        else:
            r = rng.uniform(2, 50) * s
            c = p0 + nrm * r
            d = np.abs(np.hypot(xx - c[0], yy - c[1]) - r)
        half = w / 2 * (1 + 0.4 * np.sin(along / rng.uniform(4, 20)))
        if variant == "dashed":
            half = half * (np.sin(along / rng.uniform(3, 10)) > -0.2)
        if rng.random() < 0.4:  # scratch does not cross the whole field
            lim = rng.uniform(0.2, 0.6) * s
            half = half * (np.abs(along) < lim)
    core = (d < half).astype(np.float32)
    lip = ((d >= half) & (d < 2 * half + 0.5)).astype(np.float32)
    blur_h = cv2.GaussianBlur(sc.height, (0, 0), 2.0)
    near = np.exp(-d / (4 * w))
    smear = rng.uniform(0.0, 0.8)
    h = sc.height * (1 - smear * near) + blur_h * smear * near
    sc.height = (h * (1 - core) - 1.0 * core + 0.6 * lip).astype(np.float32)
    sc.yld = (sc.yld * (1 - 0.3 * core)).astype(np.float32)
    if rng.random() < 0.3:  # dishing blotches near the scratch
        bl = np.clip(smooth_field(rng, s, 5) - 1.0, 0, 1) * near
        sc.height = (sc.height * (1 - 0.5 * bl)).astype(np.float32)
    return {"defect": "cmp_scratch", "variant": variant, "width_px": w}


def residue(sc: Scene, rng: np.random.Generator) -> dict:
    s = sc.height.shape[0]
    yy, xx = _grid(s)
    variant = str(rng.choice(["blot", "ring", "scanbox"], p=[0.65, 0.15, 0.2]))
    cover = rng.uniform(0.05, 0.4)
    if variant == "blot":
        f = smooth_field(rng, s, int(rng.integers(2, 6)))
        thr = np.quantile(f, 1 - cover)
        r = np.clip((f - thr) / 0.3, 0, 1)
    elif variant == "ring":
        c = rng.uniform(0.3, 0.7, 2) * s
        rad, wd = rng.uniform(0.15, 0.4) * s, rng.uniform(0.03, 0.1) * s
        r = np.exp(-((np.hypot(xx - c[0], yy - c[1]) - rad) / wd) ** 2)
    else:
        x0, y0 = rng.uniform(0.05, 0.5, 2) * s
        x1, y1 = x0 + rng.uniform(0.3, 0.6) * s, y0 + rng.uniform(0.3, 0.6) * s
        r = ((xx > x0) & (xx < x1) & (yy > y0) & (yy < y1)).astype(np.float32)
        r = cv2.GaussianBlur(r, (0, 0), 1.5)
    r = r.astype(np.float32)
    loss = rng.uniform(0.5, 0.9)
    hb = cv2.GaussianBlur(sc.height, (0, 0), rng.uniform(2, 6))
    sc.height = (sc.height * (1 - loss * r) + hb * loss * r * 0.5 + 0.2 * r).astype(np.float32)
    ry = float(np.mean(sc.yld)) * rng.choice([rng.uniform(0.4, 0.75), rng.uniform(1.3, 1.8)])
    tex = 1 + 0.08 * smooth_field(rng, s, 30)
    sc.yld = (sc.yld * (1 - 0.8 * r) + 0.8 * r * ry * tex).astype(np.float32)
    return {"defect": "residue", "variant": variant, "cover": cover}


def _irregular(rng: np.random.Generator, s: int, size: float) -> np.ndarray:
    """A soft irregular blob mask of about `size` px radius."""
    yy, xx = _grid(s)
    c = rng.uniform(0.25, 0.75, 2) * s
    d = np.hypot(xx - c[0], yy - c[1]) / size + 0.35 * smooth_field(rng, s, 8)
    return np.clip((1 - d) * 4, 0, 1).astype(np.float32)


def other_scene(sc: Scene, rng: np.random.Generator) -> dict:
    s = sc.height.shape[0]
    variant = str(rng.choice(["void", "hillock", "large", "combo"]))
    if variant == "void":
        b = _irregular(rng, s, rng.uniform(0.05, 0.15) * s)
        sc.height = (sc.height * (1 - b) - b).astype(np.float32)
        sc.yld = (sc.yld * (1 - 0.8 * b)).astype(np.float32)
    elif variant == "hillock":
        for _ in range(int(rng.integers(1, 5))):
            b = cv2.GaussianBlur(_irregular(rng, s, rng.uniform(0.03, 0.1) * s), (0, 0), 3)
            sc.height = (sc.height + 1.2 * b).astype(np.float32)
    elif variant == "large":
        b = _irregular(rng, s, rng.uniform(0.2, 0.4) * s)
        tex = 1 + 0.2 * smooth_field(rng, s, 25)
        sc.height = (sc.height * (1 - b) + 0.8 * b * tex).astype(np.float32)
        sc.yld = (sc.yld * (1 - b) + b * rng.uniform(0.3, 1.0) * tex).astype(np.float32)
    else:
        fns = [particle, scratch, residue, crack] if sc.view == "top" else [crack, residue]
        picks = rng.choice(len(fns), 2, replace=False)
        return {"defect": "other", "variant": "combo",
                "parts": [fns[int(i)](sc, rng)["defect"] for i in picks]}
    return {"defect": "other", "variant": variant}
