"""Parallel, deterministic dataset builder (results do not depend on the worker count)."""

from __future__ import annotations

import json
import multiprocessing as mp
from collections.abc import Sequence
from pathlib import Path

import cv2

from pipeline.files import sha256_bytes, write_bytes
from pipeline.synth.render import (
    CLASS_FAMILIES,
    CLEAN_FOR_FAMILY,
    FINE_CLASSES,
    check_names,
    family_for,
    render_scene_sample,
)
from pipeline.synth.rng import make_rng, seed_int

SAME_SCENE_P = 0.25   # odd index re-renders the previous scene under another profile
CLEAN_PAIR_P = 0.3    # a clean image re-renders a defect image's scene without the defect


def _scene_seed(seed: int, cls: str, split: str, i: int) -> tuple[int, str | None]:
    """(scene_seed, forced family) for image i of a class: scene groups are decided here."""
    r = make_rng(seed, "group", cls, split, i)
    if cls.startswith("clean_") and r.random() < CLEAN_PAIR_P:
        partners = [c for c in FINE_CLASSES if not c.startswith("clean_")
                    and any(CLEAN_FOR_FAMILY[f] == cls for f in CLASS_FAMILIES[c])]
        partner = partners[int(r.integers(len(partners)))]
        ss, fam = _scene_seed(seed, partner, split, i)
        fam = fam or family_for(partner, ss)
        if CLEAN_FOR_FAMILY[fam] == cls:
            return ss, fam
    if i % 2 == 1 and r.random() < SAME_SCENE_P:
        return _scene_seed(seed, cls, split, i - 1)
    return seed_int(seed, "scene", cls, split, i), None


def plan(classes: Sequence[str], profiles: Sequence[str], heldout_profiles: Sequence[str],
         images_per_class: int, heldout_images_per_class: int, seed: int) -> list[dict]:
    """One task per image: ids, profiles and seeds, all decided before any rendering."""
    tasks = []
    for ci, cls in enumerate(classes):
        for split, n, profs in (("t", images_per_class, profiles),
                                ("h", heldout_images_per_class, heldout_profiles)):
            for i in range(n):
                scene_seed, fam = _scene_seed(seed, cls, split, i)
                tasks.append({"id": f"{cls}_{split}{i:06d}", "fine_class": cls,
                              "profile": profs[(i + ci) % len(profs)],
                              "heldout": split == "h", "scene_seed": scene_seed,
                              "seed": seed_int(seed, cls, split, i), "family": fam})
    return tasks


def _run(args: tuple[dict, str, int, int]) -> dict:
    task, out_dir, size, ss = args
    smp = render_scene_sample(task["fine_class"], task["profile"], task["scene_seed"],
                              seed_int(task["seed"], "imaging"), size, ss, task["family"])
    out = Path(out_dir)
    rel = f"images/{task['fine_class']}/{task['id']}.png"
    mrel = f"masks/{task['fine_class']}/{task['id']}.png"
    png = cv2.imencode(".png", smp.image)[1].tobytes()
    write_bytes(out / rel, png)
    write_bytes(out / mrel, cv2.imencode(".png", smp.mask)[1].tobytes())
    return {"id": task["id"], "path": rel, "mask_path": mrel, "fine_class": task["fine_class"],
            "family": smp.params["family"], "view": smp.params["view"],
            "profile": task["profile"], "heldout": task["heldout"],
            "scene_seed": task["scene_seed"], "seed": task["seed"], "sha256": sha256_bytes(png),
            "params": json.dumps(smp.params, sort_keys=True)}


def build_dataset(out_dir: Path, *, classes: Sequence[str], profiles: Sequence[str],
                  heldout_profiles: Sequence[str], images_per_class: int,
                  heldout_images_per_class: int, image_size: int, supersample: int,
                  seed: int, workers: int, progress: bool = True) -> list[dict]:
    """Render and write images + masks; return one row per image, sorted by id."""
    check_names(list(classes), list(profiles) + list(heldout_profiles))
    if not profiles or (heldout_images_per_class > 0 and not heldout_profiles):
        raise ValueError("profiles (and heldout_profiles when heldout images are asked) "
                         "must not be empty")
    tasks = plan(classes, profiles, heldout_profiles, images_per_class,
                 heldout_images_per_class, seed)
    args = [(t, str(out_dir), image_size, supersample) for t in tasks]
    rows: list[dict] = []
    with _progress(progress, len(args)) as advance:
        if workers <= 1:
            for a in args:
                rows.append(_run(a))
                advance()
        else:
            with mp.get_context("spawn").Pool(workers) as pool:
                chunk = max(1, min(32, len(args) // (workers * 8) or 1))
                for row in pool.imap_unordered(_run, args, chunksize=chunk):
                    rows.append(row)
                    advance()
    return sorted(rows, key=lambda r: r["id"])


class _progress:
    """Rich progress bar (or nothing) yielding an `advance()` callable."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total, self.bar = enabled, total, None

    def __enter__(self):
        if not self.enabled:
            return lambda: None
        from rich.progress import Progress

        self.bar = Progress()
        self.bar.start()
        task = self.bar.add_task("synthesize", total=self.total)
        return lambda: self.bar.advance(task)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()


