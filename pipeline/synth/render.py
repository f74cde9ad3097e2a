"""Scene + defect + imaging for one sample; the class -> family table."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.errors import UserError
from pipeline.synth import defects as D
from pipeline.synth.imaging import image_scene
from pipeline.synth.overlays import apply_overlays
from pipeline.synth.patterns import FAMILY_BUILDERS, VIEW
from pipeline.synth.profiles import PROFILES
from pipeline.synth.rng import make_rng, seed_int

FINE_CLASSES: tuple[str, ...] = ("clean_layer", "clean_via", "clean_stack", "bridge", "open",
                                 "ler", "crack", "cmp_scratch", "particle", "via_defect",
                                 "residue", "other")

# Families each class is drawn in (with weights). Clean classes cover every defect context.
# Vias lean to cross-sections: the real via images (clean and defective) are mostly FIB cuts.
CLASS_FAMILIES: dict[str, dict[str, float]] = {
    "clean_layer": {"lines": 0.45, "manhattan": 0.2, "film": 0.25, "pads": 0.1},
    "clean_via": {"via_array": 0.3, "via_column": 0.45, "interconnect": 0.25},
    "clean_stack": {"stack": 0.55, "bump": 0.45},
    "bridge": {"lines": 1.0},
    "open": {"lines": 1.0},
    "ler": {"lines": 1.0},
    # Real cracks are mostly in bump/solder and die cross-sections, few in top-down lines.
    "crack": {"stack": 0.4, "bump": 0.35, "interconnect": 0.1, "film": 0.1, "lines": 0.05},
    "cmp_scratch": {"film": 0.35, "lines": 0.35, "pads": 0.15, "manhattan": 0.15},
    "particle": {"lines": 0.5, "via_array": 0.15, "film": 0.2, "manhattan": 0.15},
    "via_defect": {"via_array": 0.3, "via_column": 0.45, "interconnect": 0.25},
    "residue": {"lines": 0.35, "film": 0.25, "via_array": 0.2, "manhattan": 0.2},
    "other": {"lines": 0.35, "film": 0.25, "via_array": 0.15, "stack": 0.15, "manhattan": 0.1},
}
CLEAN_FOR_FAMILY = {"lines": "clean_layer", "manhattan": "clean_layer", "film": "clean_layer",
                    "pads": "clean_layer", "via_array": "clean_via", "via_column": "clean_via",
                    "interconnect": "clean_via",
                    "stack": "clean_stack", "bump": "clean_stack"}


@dataclass
class Sample:
    image: np.ndarray  # uint8 (H, W)
    mask: np.ndarray   # uint8 (H, W), 255 on the defect
    params: dict


def check_names(classes: list[str] | tuple[str, ...], profiles: list[str] | tuple[str, ...]
                ) -> None:
    """UserError naming the valid choices for any unknown class or profile."""
    bad_c = [c for c in classes if c not in FINE_CLASSES]
    if bad_c:
        raise UserError(f"unknown synth class(es) {bad_c}; valid: {list(FINE_CLASSES)}")
    bad_p = [p for p in profiles if p not in PROFILES]
    if bad_p:
        raise UserError(f"unknown tool profile(s) {bad_p}; valid: {sorted(PROFILES)}")


def family_for(fine_class: str, scene_seed: int) -> str:
    fams = CLASS_FAMILIES[fine_class]
    names = sorted(fams)
    p = np.array([fams[n] for n in names])
    return names[int(make_rng(scene_seed, "family").choice(len(names), p=p / p.sum()))]


def _apply_defect(fine_class: str, lay: object, family: str, rng: np.random.Generator):
    """Defective scene for the class, plus the defect's parameters."""
    layout_fns = {
        ("bridge", "lines"): D.line_bridge, ("open", "lines"): D.line_open,
        ("ler", "lines"): D.line_ler, ("via_defect", "via_array"): D.via_top_defect,
        ("via_defect", "via_column"): D.via_cross_defect,
        ("via_defect", "interconnect"): D.via_cross_defect,
    }
    scene_fns = {"crack": D.crack, "cmp_scratch": D.scratch, "particle": D.particle,
                 "residue": D.residue, "other": D.other_scene}
    if (fine_class, family) in layout_fns:
        info = layout_fns[(fine_class, family)](lay, rng)
        return lay.raster(), info
    if fine_class == "other" and family == "lines" and rng.random() < 0.4:
        info = D.line_collapse(lay, rng)
        return lay.raster(), info
    sc = lay.raster()
    return sc, scene_fns[fine_class](sc, rng)


def _defect_mask(clean, bad, ss: int, out: int) -> np.ndarray:
    changed = ((np.abs(bad.height - clean.height) > 0.25)
               | (np.abs(bad.yld - clean.yld) > 0.04)).astype(np.float32)
    small = cv2.resize(changed, (out, out), interpolation=cv2.INTER_AREA)
    return np.where(small > 0.2, 255, 0).astype(np.uint8)


def render_scene_sample(fine_class: str, profile: str, scene_seed: int, imaging_seed: int,
                        image_size: int = 128, supersample: int = 2,
                        family: str | None = None) -> Sample:
    """Render with explicit scene and imaging seeds (scene groups share scene_seed)."""
    check_names([fine_class], [profile])
    family = family or family_for(fine_class, scene_seed)
    s = image_size * supersample
    lay = FAMILY_BUILDERS[family](make_rng(scene_seed, "context", family), s)
    clean = lay.raster()
    mask = np.zeros((image_size, image_size), np.uint8)
    dinfo: dict = {}
    scene = clean
    if not fine_class.startswith("clean_"):
        for attempt in range(8):  # a defect that misses the field is redrawn
            rng = make_rng(scene_seed, "defect", fine_class, attempt)
            scene, dinfo = _apply_defect(fine_class, lay.copy(), family, rng)
            mask = _defect_mask(clean, scene, supersample, image_size)
            if mask.any():
                break
        else:
            raise RuntimeError(f"{fine_class} defect left no mask for scene {scene_seed}")
    img, iinfo = image_scene(scene, PROFILES[profile], make_rng(imaging_seed, "imaging", profile),
                             supersample, image_size)
    img, mask, oinfo = apply_overlays(img, mask, PROFILES[profile],
                                      make_rng(imaging_seed, "overlay", profile))
    params = {"fine_class": fine_class, "profile": profile, "scene_seed": scene_seed,
              "imaging_seed": imaging_seed, "family": family, "view": VIEW[family],
              "image_size": image_size, "supersample": supersample,
              "nm_per_px": scene.nm_per_px / supersample, **clean.params, **dinfo,
              **{f"img_{k}": v for k, v in iinfo.items()},
              **{f"overlay_{k}": v for k, v in oinfo.items()}}
    return Sample(img, mask, _jsonable(params))


def render_sample(fine_class: str, profile: str, seed: int, image_size: int = 128,
                  supersample: int = 2) -> Sample:
    """`seed` fixes the scene and the imaging (scene and imaging seeds are derived from it)."""
    return render_scene_sample(fine_class, profile, seed_int(seed, "scene"),
                               seed_int(seed, "imaging"), image_size, supersample)


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return round(float(v), 5)
    return v
