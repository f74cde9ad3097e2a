"""Clean pattern families (top-down and cross-section) rendered into height + material maps.

Every family draws all its context randomness when its layout is built, so a defect can be
applied to a copy and the clean and defective versions share the same scene.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import cv2
import numpy as np

from pipeline.synth.rng import loguniform
from pipeline.synth.roughness import paired_edges, rough_edges
from pipeline.synth.texture import grains, smooth_field, speckle

SUB = 16  # cv2 drawing sub-pixel factor (shift=4)


@dataclass
class Scene:
    """Supersampled scene: height (relief, ~1 = feature height), SE yield, insulating fraction."""

    height: np.ndarray
    yld: np.ndarray
    insul: np.ndarray
    nm_per_px: float
    view: str
    family: str
    params: dict = field(default_factory=dict)

    def copy(self) -> Scene:
        return Scene(self.height.copy(), self.yld.copy(), self.insul.copy(), self.nm_per_px,
                     self.view, self.family, dict(self.params))


def _rot_crop(img: np.ndarray, angle: float, size: int) -> np.ndarray:
    """Rotate a square canvas about its centre and crop the central size x size."""
    c = img.shape[0] / 2.0
    m = cv2.getRotationMatrix2D((c, c), angle, 1.0)
    m[:, 2] += size / 2.0 - c
    return cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT)


def _orient(rng: np.random.Generator) -> float:
    u = rng.random()
    if u < 0.45:
        return 0.0
    if u < 0.9:
        return 90.0
    return float(rng.choice([0.0, 90.0]) + rng.uniform(-35, 35))


def _mottle(rng: np.random.Generator, s: int, amp: float) -> np.ndarray:
    return amp * smooth_field(rng, s, int(rng.integers(6, 24)))


# --------------------------------------------------------------------------- lines
@dataclass
class LineLayout:
    """Vertical lines on a (canvas x canvas) grid, rotated by `angle` when rasterised."""

    size: int
    canvas: int
    angle: float
    pitch: float
    cd: float
    left: np.ndarray   # (n, canvas) absolute x of left edges
    right: np.ndarray
    hfac: np.ndarray   # (n, canvas) height factor (partial-depth features)
    y_line: float
    y_space: float
    insul_space: float
    mottle: np.ndarray
    nm_per_px: float
    params: dict

    def copy(self) -> LineLayout:
        return copy.deepcopy(self)

    def raster(self) -> Scene:
        c = self.canvas
        x = np.arange(c, dtype=np.float32)[None, :]
        k0 = np.rint((x - self.left[0, 0] - self.cd / 2) / self.pitch).astype(np.int32)
        n = self.left.shape[0]
        rows = np.arange(c)[:, None]
        cov = np.zeros((c, c), np.float32)
        for dk in (-1, 0, 1):
            k = np.clip(k0 + dk, 0, n - 1)
            kk = np.broadcast_to(k, (c, c))
            lo = self.left[kk, rows]
            hi = self.right[kk, rows]
            part = np.clip(np.minimum(x + 0.5, hi) - np.maximum(x - 0.5, lo), 0.0, 1.0)
            cov = np.maximum(cov, part * self.hfac[kk, rows])
        if self.angle == 90.0:
            cov = cov.T.copy()
        elif self.angle != 0.0:
            cov = _rot_crop(cov, self.angle, self.size)
        s = self.size
        cov = cov[:s, :s]
        yld = (self.y_space + (self.y_line - self.y_space) * np.minimum(cov, 1.0)) * (
            1.0 + self.mottle)
        insul = (1.0 - np.minimum(cov, 1.0)) * self.insul_space
        return Scene(cov.copy(), yld.astype(np.float32), insul.astype(np.float32),
                     self.nm_per_px, "top", "lines", dict(self.params))


def lines_layout(rng: np.random.Generator, s: int) -> LineLayout:
    angle = _orient(rng)
    canvas = s if angle in (0.0, 90.0) else int(np.ceil(s * 1.45)) + 4
    pitch = loguniform(rng, 5.0, 36.0) * s / 128.0
    pitch_nm = loguniform(rng, 28.0, 400.0)
    nmpp = pitch_nm / pitch
    duty = rng.uniform(0.35, 0.65)
    cd = duty * pitch
    n = int(canvas / pitch) + 4
    off = rng.uniform(-pitch, 0)
    # clean roughness: spec range, capped so it stays below the LER-defect range in px
    three_sigma_nm = min(rng.uniform(1.0, 4.0), 0.08 * cd * nmpp)
    xi_nm, alpha, rho = rng.uniform(8, 40), rng.uniform(0.4, 1.0), rng.uniform(-0.2, 0.5)
    sig = three_sigma_nm / 3.0 / nmpp
    le, re = paired_edges(rng, n, canvas, sig, xi_nm / nmpp, alpha, rho)
    wander = rough_edges(rng, n, canvas, rng.uniform(0.5, 2.0) / nmpp,
                         rng.uniform(100, 500) / nmpp, 1.0)
    centers = (off + pitch * np.arange(n) + rng.normal(0, 0.02 * pitch, n))[:, None]
    left = (centers - cd / 2 + le - wander / 2).astype(np.float32)
    right = (centers + cd / 2 + re + wander / 2).astype(np.float32)
    y_line, y_space = rng.uniform(0.45, 1.0), rng.uniform(0.15, 0.6)
    params = {"pitch_px": pitch, "pitch_nm": pitch_nm, "duty": duty, "angle": angle,
              "ler_3sigma_nm": three_sigma_nm, "ler_xi_nm": xi_nm, "ler_alpha": alpha,
              "ler_rho": rho}
    return LineLayout(s, canvas, angle, pitch, cd, left, right,
                      np.ones_like(left), y_line, y_space, float(rng.random() < 0.5),
                      _mottle(rng, s, rng.uniform(0.0, 0.06)), nmpp, params)


# --------------------------------------------------------------------------- vias (top)
@dataclass
class ViaLayout:
    size: int
    cx: np.ndarray
    cy: np.ndarray
    rx: np.ndarray
    ry: np.ndarray
    value: np.ndarray      # 1 = full depth/height, <1 partial
    polys: list            # malformed vias as polygons (list of (k,2) arrays)
    links: list            # merged vias: (i, j, width) capsules
    sign: float            # -1 holes (dark), +1 pillars (bright)
    pitch: float
    y_feat: float
    y_film: float
    mottle: np.ndarray
    nm_per_px: float
    params: dict

    def copy(self) -> ViaLayout:
        return copy.deepcopy(self)

    def raster(self) -> Scene:
        s = self.size
        img = np.zeros((s, s), np.uint8)
        for x, y, rx, ry, v in zip(self.cx, self.cy, self.rx, self.ry, self.value, strict=False):
            if v <= 0:
                continue
            cv2.ellipse(img, (int(x * SUB), int(y * SUB)), (int(rx * SUB), int(ry * SUB)), 0,
                        0, 360, int(255 * v), -1, cv2.LINE_AA, shift=4)
        for poly in self.polys:
            cv2.fillPoly(img, [np.int32(poly * SUB)], 255, cv2.LINE_AA, shift=4)
        for i, j, w in self.links:
            cv2.line(img, (int(self.cx[i] * SUB), int(self.cy[i] * SUB)),
                     (int(self.cx[j] * SUB), int(self.cy[j] * SUB)), 255,
                     max(int(w), 1), cv2.LINE_AA, shift=4)
        cov = img.astype(np.float32) / 255.0
        height = self.sign * cov
        yld = (self.y_film + (self.y_feat - self.y_film) * cov) * (1.0 + self.mottle)
        insul = (1.0 - cov) if self.sign < 0 else np.zeros_like(cov)
        return Scene(height, yld.astype(np.float32), insul.astype(np.float32), self.nm_per_px,
                     "top", "via_array", dict(self.params))


def via_layout(rng: np.random.Generator, s: int) -> ViaLayout:
    pitch = loguniform(rng, 7.0, 32.0) * s / 128.0
    nmpp = loguniform(rng, 40.0, 250.0) / pitch
    d = rng.uniform(0.35, 0.6) * pitch
    lattice = rng.choice(["square", "hex", "staggered"])
    ay = pitch * (np.sqrt(3) / 2 if lattice == "hex" else rng.uniform(0.8, 1.6))
    ys = np.arange(-1, s / ay + 2) * ay + rng.uniform(0, ay)
    xs = np.arange(-1, s / pitch + 2) * pitch + rng.uniform(0, pitch)
    gx, gy = np.meshgrid(xs, ys)
    if lattice != "square":
        gx = gx + (np.arange(len(ys))[:, None] % 2) * pitch / 2
    cx, cy = gx.ravel(), gy.ravel()
    n = cx.size
    jit = rng.uniform(0.5, 3.0) / nmpp
    ell = rng.uniform(0.85, 1.15)
    r = np.maximum(d / 2 + rng.normal(0, jit, n), 0.3 * d / 2)
    sign = -1.0 if rng.random() < 0.75 else 1.0
    y_feat, y_film = (rng.uniform(0.05, 0.35), rng.uniform(0.4, 0.9)) if sign < 0 else (
        rng.uniform(0.6, 1.0), rng.uniform(0.15, 0.5))
    params = {"pitch_px": pitch, "pitch_nm": pitch * nmpp, "diam_frac": d / pitch,
              "lattice": str(lattice), "sign": sign}
    return ViaLayout(s, cx + rng.normal(0, jit, n), cy + rng.normal(0, jit, n), r * ell,
                     r / ell, np.ones(n), [], [], sign, pitch, y_feat, y_film,
                     _mottle(rng, s, rng.uniform(0.0, 0.06)), nmpp, params)


# --------------------------------------------------------------------------- simple families
@dataclass
class StaticLayout:
    """Families whose defects act on the rendered scene only."""

    scene: Scene

    def copy(self) -> StaticLayout:
        return StaticLayout(self.scene.copy())

    def raster(self) -> Scene:
        return self.scene.copy()


def _roughen(rng: np.random.Generator, cov: np.ndarray, amp_px: float) -> np.ndarray:
    """Edge roughness for polygon families: displace by a smooth random field."""
    s = cov.shape[0]
    dx = amp_px * smooth_field(rng, s, int(rng.integers(12, 40)))
    dy = amp_px * smooth_field(rng, s, int(rng.integers(12, 40)))
    g = np.arange(s, dtype=np.float32)
    return cv2.remap(cov, g[None, :] + dx, g[:, None] + dy, cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REFLECT)


def manhattan_layout(rng: np.random.Generator, s: int) -> StaticLayout:
    pitch = loguniform(rng, 8.0, 30.0) * s / 128.0
    nmpp = loguniform(rng, 40.0, 200.0) / pitch
    w = rng.uniform(0.35, 0.6) * pitch
    img = np.zeros((s, s), np.uint8)
    for t in np.arange(-1, s / pitch + 1):
        y = t * pitch + pitch / 2
        x = rng.uniform(-s * 0.3, 0)
        while x < s:
            ln = rng.uniform(1.0, 12.0) * pitch
            cv2.rectangle(img, (int(x * SUB), int((y - w / 2) * SUB)),
                          (int((x + ln) * SUB), int((y + w / 2) * SUB)), 255, -1,
                          cv2.LINE_AA, shift=4)
            if rng.random() < 0.35:  # jog / T-junction to the next track
                xj = x + rng.uniform(0.2, 0.9) * ln
                cv2.rectangle(img, (int((xj - w / 2) * SUB), int(y * SUB)),
                              (int((xj + w / 2) * SUB), int((y + pitch) * SUB)), 255, -1,
                              cv2.LINE_AA, shift=4)
            x += ln + rng.uniform(0.6, 4.0) * pitch
    if rng.random() < 0.3:  # fill tiles
        for _ in range(int(rng.integers(1, 4))):
            x0, y0 = rng.uniform(0, s, 2)
            sz = rng.uniform(1.5, 4) * pitch
            cv2.rectangle(img, (int(x0), int(y0)), (int(x0 + sz), int(y0 + sz)), 255, -1)
    cov = cv2.GaussianBlur(img.astype(np.float32) / 255.0, (0, 0), rng.uniform(2, 8) / nmpp + 0.5)
    cov = _roughen(rng, cov, rng.uniform(0.3, 1.2) / 3 * 3.0 / max(nmpp, 0.5))
    if rng.random() < 0.5:
        cov = cov.T.copy()
    yl, ys = rng.uniform(0.5, 1.0), rng.uniform(0.15, 0.55)
    yld = (ys + (yl - ys) * cov) * (1 + _mottle(rng, s, rng.uniform(0, 0.05)))
    return StaticLayout(Scene(cov, yld.astype(np.float32), (1 - cov) * 0.7, nmpp, "top",
                              "manhattan", {"pitch_px": pitch}))


def film_layout(rng: np.random.Generator, s: int) -> StaticLayout:
    nmpp = loguniform(rng, 1.0, 8.0)
    base = rng.uniform(0.3, 0.8)
    if rng.random() < 0.55:
        cell = min(rng.uniform(20, 150) / nmpp, rng.uniform(3, 12))
        fac, edge = grains(rng, (s, s), cell, rng.uniform(0.03, 0.08))
        height = -0.25 * cv2.GaussianBlur(edge, (0, 0), 0.8) + 0.03 * _mottle(rng, s, 1.0)
        yld = base * fac * (1 + _mottle(rng, s, 0.04))
        kind = "grain"
    else:
        height = 0.03 * _mottle(rng, s, 1.0)
        yld = base * (1 + _mottle(rng, s, rng.uniform(0.01, 0.05)))
        kind = "smooth"
    insul = np.full((s, s), float(kind == "smooth"), np.float32)
    return StaticLayout(Scene(height.astype(np.float32), yld.astype(np.float32), insul, nmpp,
                              "top", "film", {"film": kind}))


def pads_layout(rng: np.random.Generator, s: int) -> StaticLayout:
    nmpp = loguniform(rng, 4.0, 40.0)
    img = np.zeros((s, s), np.uint8)
    pw = rng.uniform(0.15, 0.5) * s
    gap = rng.uniform(0.1, 0.6) * pw
    ox, oy = rng.uniform(-pw, 0, 2)
    for y in np.arange(oy, s, pw + gap):
        for x in np.arange(ox, s, pw + gap):
            cv2.rectangle(img, (int(x), int(y)), (int(x + pw), int(y + pw * rng.uniform(0.6, 1.4))),
                          255, -1)
    cov = cv2.GaussianBlur(img.astype(np.float32) / 255.0, (0, 0), 1.0)
    fac, _ = grains(rng, (s, s), rng.uniform(3, 12), rng.uniform(0.02, 0.08))
    yp, yb = rng.uniform(0.5, 1.0), rng.uniform(0.1, 0.5)
    yld = (yb * (1 + _mottle(rng, s, 0.05)) * (1 - cov) + yp * fac * cov)
    return StaticLayout(Scene(cov, yld.astype(np.float32), (1 - cov), nmpp, "top", "pads",
                              {"pad_px": pw}))


# --------------------------------------------------------------------------- cross-sections
def _layer_texture(rng: np.random.Generator, s: int, kind: str) -> np.ndarray:
    if kind == "grain":
        fac, edge = grains(rng, (s, s), rng.uniform(4, 20), rng.uniform(0.04, 0.12))
        return fac - 0.1 * edge
    if kind == "columnar":
        fac, _ = grains(rng, (s, s // 4), rng.uniform(3, 8), rng.uniform(0.04, 0.1))
        return cv2.resize(fac, (s, s), interpolation=cv2.INTER_NEAREST)
    if kind == "speckle":
        return 1.0 + rng.uniform(0.3, 0.8) * (speckle(rng, (s, s), 0.35, (1.0, 4.0)) - 0.2)
    return 1.0 + _mottle(rng, s, 0.03)


MATERIALS = ("smooth", "grain", "columnar", "speckle")


def stack_layout(rng: np.random.Generator, s: int) -> StaticLayout:
    nmpp = loguniform(rng, 5.0, 200.0)
    n = int(rng.integers(3, 8))
    cuts = np.sort(rng.uniform(0.05, 0.95, n - 1)) * s
    iface = []
    for c in cuts:
        wob = rough_edges(rng, 1, s, rng.uniform(0.3, 3.0) * s / 256, rng.uniform(10, 80), 1.0)[0]
        if rng.random() < 0.25:  # scalloped intermetallic interface
            wob = wob - 3 * np.abs(rough_edges(rng, 1, s, 2.0 * s / 256, 6.0, 0.8)[0])
        iface.append(c + wob)
    idx = (np.arange(s)[:, None] >= np.array(iface)[:, None, :]).sum(0)  # layer index (s, s)
    yld = np.zeros((s, s), np.float32)
    height = np.zeros((s, s), np.float32)
    kinds = []
    for k in range(n):
        kind = str(rng.choice(MATERIALS))
        kinds.append(kind)
        sel = idx == k
        if not sel.any():
            continue
        tex = _layer_texture(rng, s, kind)
        yld[sel] = (rng.uniform(0.12, 1.0) * tex)[sel]
        height[sel] = rng.uniform(-0.1, 0.15)
    if rng.random() < 0.4:  # a layer of blocks (pillars / pads) separated by dark gaps
        k = int(rng.integers(0, n))
        bw, gw = rng.uniform(0.15, 0.5) * s, rng.uniform(0.03, 0.15) * s
        gaps = np.zeros(s, bool)
        for x in np.arange(rng.uniform(-bw, 0), s, bw + gw):
            gaps[max(int(x + bw), 0):max(int(x + bw + gw), 0)] = True
        sel = (idx == k) & gaps[None, :]
        yld[sel] = rng.uniform(0.05, 0.2)
    if rng.random() < 0.4:
        yld = np.flipud(yld).copy()
        height = np.flipud(height).copy()
    return StaticLayout(Scene(height, yld, (yld < 0.3).astype(np.float32), nmpp, "cross",
                              "stack", {"layers": n, "materials": kinds}))


def bump_layout(rng: np.random.Generator, s: int) -> StaticLayout:
    nmpp = loguniform(rng, 50.0, 400.0)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    bg = rng.uniform(0.04, 0.25) * (1 + _mottle(rng, s, 0.05))
    yld = bg.astype(np.float32)
    base = rng.uniform(0.72, 0.95) * s
    sub = yy > base + rng.uniform(0.02, 0.06) * s
    yld[sub] = (rng.uniform(0.2, 0.6) * _layer_texture(rng, s, str(rng.choice(MATERIALS))))[sub]
    cx = s / 2 + rng.normal(0, 0.05 * s)
    a = rng.uniform(0.25, 0.48) * s
    kind = "dome" if rng.random() < 0.6 else "pillar"
    if kind == "dome":
        b = rng.uniform(0.55, 1.0) * base
        p = rng.uniform(2.0, 2.6)
        body = (np.abs((xx - cx) / a) ** p + np.abs((yy - base) / b) ** p <= 1) & (yy <= base)
        neck = np.abs(xx - cx) < a * (0.6 + 0.4 * np.clip((base - yy) / (0.15 * s), 0, 1))
        body &= neck
    else:
        top = base - rng.uniform(0.4, 0.8) * base
        r = rng.uniform(0.05, 0.2) * s
        img = np.zeros((s, s), np.uint8)
        x0, x1 = int(cx - a), int(cx + a)
        cv2.rectangle(img, (x0, int(top + r)), (x1, int(base)), 1, -1)
        cv2.rectangle(img, (int(x0 + r), int(top)), (int(x1 - r), int(base)), 1, -1)
        for xc in (x0 + r, x1 - r):
            cv2.circle(img, (int(xc), int(top + r)), int(r), 1, -1)
        body = img.astype(bool)
    tex = _layer_texture(rng, s, "grain" if rng.random() < 0.6 else "smooth")
    if rng.random() < 0.5:  # intermetallic specks
        tex = tex - 0.3 * speckle(rng, (s, s), 0.03, (0.8, 2.5))
    yld[body] = (rng.uniform(0.45, 1.0) * tex)[body]
    pad = (yy > base - 0.03 * s) & (yy <= base + 0.02 * s) & (np.abs(xx - cx) < a * 1.05)
    yld[pad] = rng.uniform(0.5, 1.0)
    height = np.where(body | pad, 0.1, 0.0).astype(np.float32)
    return StaticLayout(Scene(height, yld.astype(np.float32), (~(body | pad | sub)).astype(
        np.float32), nmpp, "cross", "bump", {"bump": kind}))


@dataclass
class ColumnLayout:
    """Cross-section via/contact columns: tiers of tapered metal columns in a layered stack."""

    size: int
    bg_yld: np.ndarray
    cols: list      # dicts: x, y0, y1, w0, w1, value, shift
    y_metal: float
    caps: list      # (x0, x1, y0, y1) caps / landing pads
    voids: list     # (x, y, rx, ry) dark voids
    nm_per_px: float
    params: dict
    family: str = "via_column"

    def copy(self) -> ColumnLayout:
        return copy.deepcopy(self)

    def raster(self) -> Scene:
        s = self.size
        metal = np.zeros((s, s), np.uint8)
        dark = np.zeros((s, s), np.uint8)
        for x0, x1, y0, y1 in self.caps:
            cv2.rectangle(metal, (int(x0 * SUB), int(y0 * SUB)), (int(x1 * SUB), int(y1 * SUB)),
                          255, -1, cv2.LINE_AA, shift=4)
        for c in self.cols:
            x = c["x"] + c.get("shift", 0.0)
            pts = np.array([[x - c["w0"] / 2, c["y0"]], [x + c["w0"] / 2, c["y0"]],
                            [x + c["w1"] / 2, c["y1"]], [x - c["w1"] / 2, c["y1"]]])
            target = metal if c["value"] > 0 else dark
            cv2.fillPoly(target, [np.int32(pts * SUB)], 255, cv2.LINE_AA, shift=4)
            if 0 < c.get("fill", 1.0) < 1.0:  # partially filled: upper part left empty
                yc = c["y0"] + (1 - c["fill"]) * (c["y1"] - c["y0"])
                cv2.rectangle(dark, (int((x - c["w0"]) * SUB), int(c["y0"] * SUB)),
                              (int((x + c["w0"]) * SUB), int(yc * SUB)), 255, -1,
                              cv2.LINE_AA, shift=4)
        for x, y, rx, ry in self.voids:
            cv2.ellipse(dark, (int(x * SUB), int(y * SUB)), (int(rx * SUB), int(ry * SUB)), 0,
                        0, 360, 255, -1, cv2.LINE_AA, shift=4)
        m = metal.astype(np.float32) / 255.0
        d = dark.astype(np.float32) / 255.0
        m = m * (1 - d)
        yld = self.bg_yld * (1 - m) * (1 - 0.8 * d) + self.y_metal * m
        height = 0.12 * m - 1.0 * d
        return Scene(height.astype(np.float32), yld.astype(np.float32), 1.0 - m, self.nm_per_px,
                     "cross", self.family, dict(self.params))


def column_layout(rng: np.random.Generator, s: int) -> ColumnLayout:
    nmpp = loguniform(rng, 5.0, 100.0)
    n_bands = int(rng.integers(2, 6))
    cuts = np.sort(rng.uniform(0, 1, n_bands - 1)) * s
    bg = np.zeros((s, s), np.float32)
    idx = np.broadcast_to((np.arange(s)[:, None] >= cuts[None, :]).sum(1)[:, None], (s, s))
    for k in range(n_bands):
        bg[idx == k] = rng.uniform(0.1, 0.6)
    bg *= 1 + _mottle(rng, s, 0.04)
    tiers = int(rng.integers(1, 4))
    edges = np.sort(rng.uniform(0.0, 1.0, tiers + 1)) * s
    edges[0], edges[-1] = rng.uniform(-0.1, 0.2) * s, rng.uniform(0.8, 1.1) * s
    pitch = loguniform(rng, 14, 70) * s / 128
    cols, caps = [], []
    off = rng.uniform(0, pitch)
    taper = rng.uniform(0.5, 1.0)
    for t in range(tiers):
        w = rng.uniform(0.2, 0.55) * pitch
        for x in np.arange(off, s + pitch, pitch):
            cols.append({"x": float(x + rng.normal(0, 0.3)), "y0": float(edges[t]),
                         "y1": float(edges[t + 1]), "w0": float(w),
                         "w1": float(w * taper), "value": 1.0})
            if rng.random() < 0.5 or t == 0:
                cw = w * rng.uniform(1.2, 2.0)
                h = rng.uniform(0.03, 0.08) * s
                caps.append((x - cw / 2, x + cw / 2, edges[t], edges[t] + h))
    return ColumnLayout(s, bg.astype(np.float32), cols, rng.uniform(0.6, 1.0),
                        caps if rng.random() < 0.7 else [], [], nmpp,
                        {"tiers": tiers, "pitch_px": pitch})


def interconnect_layout(rng: np.random.Generator, s: int) -> ColumnLayout:
    """Cross-section of a multi-level interconnect: 2-4 metal levels of line cuts (bright
    rectangles, wider and further apart going up) in dielectric, joined by vias that land on
    the lines below, each level's vias a tier of columns (so via defects apply as to columns).
    """
    nmpp = loguniform(rng, 3.0, 60.0)
    levels = int(rng.integers(2, 5))
    tops = rng.uniform(-0.05, 0.2) * s + np.cumsum(rng.uniform(0.15, 0.32, levels)) * s
    bg = np.full((s, s), rng.uniform(0.08, 0.35), np.float32)
    bands = (np.arange(s)[:, None] >= tops[None, :]).sum(1)  # dielectric layer under each level
    for k in range(levels + 1):
        bg[bands == k] *= rng.uniform(0.8, 1.25)
    bg *= 1 + _mottle(rng, s, 0.04)
    pitch0 = loguniform(rng, 10, 30) * s / 128
    caps, cols = [], []
    lines_at: list[np.ndarray] = []
    for k in range(levels):  # k = 0 is the top level (the widest)
        grow = 1.0 + 0.5 * (levels - 1 - k) * rng.uniform(0.3, 1.0)
        pitch = pitch0 * grow
        w = rng.uniform(0.35, 0.6) * pitch
        h = rng.uniform(0.05, 0.12) * s * grow ** 0.5
        xs = np.arange(rng.uniform(0, pitch), s + pitch, pitch)
        lines_at.append(xs)
        for x in xs:
            caps.append((x - w / 2, x + w / 2, tops[k], tops[k] + h))
        if k > 0:  # vias from this level's lines up to the level above
            above = lines_at[k - 1]
            y0 = tops[k - 1] + h * 0.5
            for x in xs:
                j = int(np.argmin(np.abs(above - x)))
                if abs(above[j] - x) < pitch * 0.4 and rng.random() < 0.7:
                    vw = rng.uniform(0.25, 0.45) * w
                    cols.append({"x": float(x), "y0": float(y0), "y1": float(tops[k] + 1),
                                 "w0": float(vw * rng.uniform(1.0, 1.4)), "w1": float(vw),
                                 "value": 1.0})
    if not cols:  # every level joined at least once, so a via defect has a target
        x = float(lines_at[-1][len(lines_at[-1]) // 2])
        cols.append({"x": x, "y0": float(tops[-2]), "y1": float(tops[-1] + 1),
                     "w0": pitch0 * 0.2, "w1": pitch0 * 0.2, "value": 1.0})
    return ColumnLayout(s, bg.astype(np.float32), cols, rng.uniform(0.6, 1.0), caps, [], nmpp,
                        {"levels": levels, "pitch_px": pitch0}, family="interconnect")


FAMILY_BUILDERS = {
    "lines": lines_layout,
    "via_array": via_layout,
    "manhattan": manhattan_layout,
    "film": film_layout,
    "pads": pads_layout,
    "stack": stack_layout,
    "bump": bump_layout,
    "via_column": column_layout,
    "interconnect": interconnect_layout,
}
VIEW = {"lines": "top", "via_array": "top", "manhattan": "top", "film": "top", "pads": "top",
        "stack": "cross", "bump": "cross", "via_column": "cross", "interconnect": "cross"}
