"""Grouped stratified split, real-folder split, and the leakage report."""

from __future__ import annotations

from collections import Counter

import cv2
import numpy as np
import pytest

from pipeline.data.hashing import format_hash, phash, phash_dihedral
from pipeline.data.split import grouped_stratified_split, leakage_report

CLASSES = ("bridge", "open", "crack", "via")


def _rows(n_groups: int = 400, seed: int = 0) -> list[dict]:
    """Groups of 1-3 rows of one class; every 10th group held out."""
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(n_groups):
        cls = CLASSES[int(rng.integers(len(CLASSES)))]
        for k in range(int(rng.integers(1, 4))):
            rows.append(
                {"id": f"{g}-{k}", "scene_seed": g, "fine_class": cls, "heldout": g % 10 == 0}
            )
    return rows


def test_groups_stay_together_and_heldout_apart():
    rows = _rows()
    out = grouped_stratified_split(rows, val_fraction=0.15, test_fraction=0.15, seed=1)
    assert set(out) == {"train", "val", "test", "heldout"}
    assert sum(len(v) for v in out.values()) == len(rows)
    where: dict[int, set[str]] = {}
    for name, part in out.items():
        for r in part:
            where.setdefault(r["scene_seed"], set()).add(name)
    assert all(len(s) == 1 for s in where.values())
    assert all(r["heldout"] for r in out["heldout"])
    assert not any(r["heldout"] for name in ("train", "val", "test") for r in out[name])


def test_fractions_met_per_class():
    rows = _rows(1200)
    out = grouped_stratified_split(rows, val_fraction=0.2, test_fraction=0.1, seed=3)
    total = Counter(r["fine_class"] for r in rows if not r["heldout"])
    for name, frac in (("train", 0.7), ("val", 0.2), ("test", 0.1)):
        got = Counter(r["fine_class"] for r in out[name])
        for cls in CLASSES:
            assert abs(got[cls] / total[cls] - frac) < 0.03, (name, cls)


def test_deterministic_for_a_seed():
    rows = _rows()
    ids = {
        seed: {
            k: [r["id"] for r in v]
            for k, v in grouped_stratified_split(
                rows, val_fraction=0.2, test_fraction=0.2, seed=seed
            ).items()
        }
        for seed in (5, 6)
    }
    again = grouped_stratified_split(rows, val_fraction=0.2, test_fraction=0.2, seed=5)
    assert ids[5] == {k: [r["id"] for r in v] for k, v in again.items()}
    assert ids[5] != ids[6]


def test_mixed_heldout_group_and_csv_strings():
    rows = [
        {"scene_seed": 1, "fine_class": "a", "heldout": "False"},
        {"scene_seed": 1, "fine_class": "a", "heldout": "True"},
    ]
    with pytest.raises(ValueError, match="scene_seed=1"):
        grouped_stratified_split(rows, val_fraction=0.1, test_fraction=0.1, seed=0)
    rows[1]["heldout"] = "false"  # a CSV string is not truthy just for being non-empty
    out = grouped_stratified_split(rows, val_fraction=0.1, test_fraction=0.1, seed=0)
    assert not out["heldout"]


def _texture(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    field = cv2.GaussianBlur(rng.normal(0, 1, (96, 96)).astype(np.float32), (0, 0), 3)
    return np.clip(128 + 60 * field / field.std(), 0, 255).astype(np.uint8)


def _hashed(ids: range, dihedral: bool = False) -> list[dict]:
    rows = []
    for i in ids:
        img = _texture(i)
        h = [format_hash(x) for x in phash_dihedral(img)] if dihedral else phash(img)
        rows.append({"id": f"img{i}", "sha256": f"sha{i}", "phash": h})
    return rows


def test_leakage_report_clean_data_passes():
    rep = leakage_report({"train": _hashed(range(30)), "val": _hashed(range(30, 40))})
    assert rep["ok"] and not rep["exact"] and not rep["near"]
    assert rep["counts"]["rows"] == {"train": 30, "val": 10}


def test_leakage_report_catches_planted_duplicates():
    train, test = _hashed(range(30)), _hashed(range(30, 40))
    test.append({**train[3], "id": "copy"})  # exact
    noisy = np.clip(_texture(7) + np.random.default_rng(9).normal(0, 4, (96, 96)), 0, 255).astype(
        np.uint8
    )
    test.append({"id": "noisy", "sha256": "other", "phash": phash(noisy)})
    train.append({**train[0], "id": "dup-within"})
    rep = leakage_report({"train": train, "test": test})
    assert not rep["ok"]
    assert rep["exact"] == [{"a": "copy", "split_a": "test", "b": "img3", "split_b": "train"}]
    assert [(p["a"], p["b"]) for p in rep["near"]] == [("noisy", "img7")]
    assert rep["exact_within"] == [{"a": "dup-within", "b": "img0", "split": "train"}]


def test_leakage_report_dihedral():
    train, val = _hashed(range(20), dihedral=True), _hashed(range(20, 25), dihedral=True)
    flipped = np.rot90(np.fliplr(_texture(4)))
    val.append(
        {"id": "flip", "sha256": "f", "phash": [format_hash(x) for x in phash_dihedral(flipped)]}
    )
    assert leakage_report({"train": train, "val": val}, dihedral=False)["ok"]
    rep = leakage_report({"train": train, "val": val}, dihedral=True)
    assert [(p["a"], p["b"], p["distance"]) for p in rep["near"]] == [("img4", "flip", 0)]
