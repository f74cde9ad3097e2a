"""split: grouped stratified train/val/test of the synthetic labels, held-out profiles apart,
and a leakage check (exact and near duplicates) across every pair of splits."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2

from pipeline import layout
from pipeline.data.hashing import format_hash, phash
from pipeline.data.split import grouped_stratified_split, leakage_report
from pipeline.errors import UserError
from pipeline.files import read_csv, write_csv, write_json
from pipeline.tracking import StageRun

log = logging.getLogger(__name__)

COLUMNS = ["id", "path", "fine_class", "family", "view", "profile", "heldout", "scene_seed",
           "sha256", "phash", "standin_split"]


def _load_rows(root: Path) -> list[dict]:
    labels = root / layout.SYNTHETIC / "labels.csv"
    if not labels.is_file():
        raise UserError(f"{labels} is missing; run the synthesize stage first (dvc repro)")
    rows = read_csv(labels)
    for row in rows:
        row["heldout"] = row["heldout"] == "True"
        row["scene_seed"] = int(row["scene_seed"])
        # Paths relative to the project root, so every later stage can open them directly.
        row["path"] = str(layout.SYNTHETIC / row["path"])
        image = cv2.imread(str(root / row["path"]), cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise UserError(f"{row['path']} cannot be read; rerun synthesize (dvc repro -f synthesize)")
        row["phash"] = format_hash(phash(image))
    return rows


def _assign_standin_split(heldout: list[dict], params: dict) -> None:
    """Held-out profiles stand in for real data when a phase has none: give each image a
    stand-in role (train/val/test), grouped by scene like the main split."""
    if not heldout:
        return
    parts = grouped_stratified_split(
        heldout,
        val_fraction=params["standin_val_fraction"],
        test_fraction=params["standin_test_fraction"],
        seed=params["seed"] + 1,
        heldout_key=None,
    )
    for role, rows in parts.items():
        for row in rows:
            row["standin_split"] = role


def run(cfg: dict, root: Path) -> None:
    params = cfg["split"]
    with StageRun(root, cfg, "split") as tracker:
        tracker.log_params({"split": params})
        rows = _load_rows(root)
        splits = grouped_stratified_split(
            rows,
            val_fraction=params["val_fraction"],
            test_fraction=params["test_fraction"],
            seed=params["seed"],
        )
        _assign_standin_split(splits["heldout"], params)
        report = leakage_report(splits, max_distance=params["near_dup_max_distance"])
        out = root / layout.SPLITS
        for name, split_rows in splits.items():
            write_csv(out / f"{name}.csv", split_rows, COLUMNS)
        write_json(out / "leakage.json", report)

        metrics = {f"images_{name}": len(r) for name, r in splits.items()}
        metrics["leak_exact"] = len(report["exact"])
        metrics["leak_near"] = len(report["near"])
        write_json(root / layout.SPLIT_REPORT, metrics)
        tracker.log_metrics(metrics)
        tracker.log_artifact(out / "leakage.json", "split")
        log.info("split sizes %s; leakage exact=%d near=%d", metrics, metrics["leak_exact"],
                 metrics["leak_near"])
        if not report["ok"] and params["fail_on_leak"]:
            raise UserError(
                f"leakage across splits: {metrics['leak_exact']} exact and {metrics['leak_near']} "
                f"near duplicates, listed in {layout.SPLITS / 'leakage.json'}; fix the data or set "
                "split.fail_on_leak=false to accept them"
            )
