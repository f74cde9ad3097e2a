"""synthesize: render the synthetic SEM dataset (images, masks, labels.csv, sample grids)."""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path

from pipeline import layout
from pipeline.files import atomic_dir, write_csv, write_json
from pipeline.synth import build_dataset, make_grids
from pipeline.taxonomy import Taxonomy
from pipeline.tracking import StageRun

log = logging.getLogger(__name__)

COLUMNS = ["id", "path", "mask_path", "fine_class", "family", "view", "profile", "heldout",
           "scene_seed", "seed", "sha256", "params"]


def run(cfg: dict, root: Path) -> None:
    params = cfg["synth"]
    taxonomy = Taxonomy.from_config(cfg["taxonomy"])
    with StageRun(root, cfg, "synthesize") as tracker:
        tracker.log_params({"synth": params})
        start = time.perf_counter()
        with atomic_dir(root / layout.SYNTHETIC) as out:
            rows = build_dataset(
                out,
                classes=taxonomy.fine_classes,
                profiles=params["profiles"],
                heldout_profiles=params["heldout_profiles"],
                images_per_class=params["images_per_class"],
                heldout_images_per_class=params["heldout_images_per_class"],
                image_size=params["image_size"],
                supersample=params["supersample"],
                seed=params["seed"],
                workers=params["workers"],
            )
            build_seconds = time.perf_counter() - start
            write_csv(out / "labels.csv", rows, COLUMNS)
            make_grids(rows, out, out / "grids", per_cell=params["grid_per_cell"])
            checks = _run_checks(rows, out, params)
            write_json(out / "checks.json", checks)

        metrics = {
            "images": len(rows),
            "build_seconds": round(build_seconds, 2),
            "images_per_second": round(len(rows) / build_seconds, 1),
            **{f"class_{k}": v for k, v in sorted(Counter(r["fine_class"] for r in rows).items())},
            **{f"profile_{k}": v for k, v in sorted(Counter(r["profile"] for r in rows).items())},
            **_numeric(checks, "check"),
        }
        write_json(root / layout.SYNTHESIZE_REPORT, metrics)
        tracker.log_metrics(metrics)
        tracker.log_artifacts(root / layout.SYNTHETIC / "grids", "grids")
        tracker.log_artifact(root / layout.SYNTHETIC / "checks.json", "checks")
        log.info("synthesized %d images in %.1f s (%.1f images/s)", len(rows), build_seconds,
                 metrics["images_per_second"])


def _run_checks(rows: list[dict], images_root: Path, params: dict) -> dict:
    """SYNTH_SPEC 'Checks' that are quick enough to run on every build."""
    from pipeline.synth import checks

    result = {"ler_recovery": checks.ler_recovery(), "noise_vs_mean": checks.noise_vs_mean()}
    if params["audit_per_class"] > 0:
        result["shortcut_audit"] = checks.shortcut_audit(
            rows, images_root, max_per_class=params["audit_per_class"], seed=params["seed"]
        )
    return result


def _numeric(tree: dict, prefix: str) -> dict[str, float]:
    """Flatten the numeric leaves of a nested dict into metric names."""
    out: dict[str, float] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}"
        if isinstance(value, dict):
            out.update(_numeric(value, name))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = value
    return out
