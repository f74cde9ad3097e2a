"""Leakage-safe splits: grouped and stratified (synthetic scenes, real near-duplicate groups),
a report of exact and near duplicates across splits, and split rows as a phase's items."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.hashing import near_duplicates, parse_hash
from pipeline.taxonomy import Taxonomy

SPLITS = ("train", "val", "test")


def grouped_stratified_split(
    rows: Sequence[dict],
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    group_key: str = "scene_seed",
    stratify_key: str = "fine_class",
    heldout_key: str | None = "heldout",
) -> dict[str, list[dict]]:
    """Assign whole groups to train/val/test so each class meets the fractions; heldout apart.

    Groups are visited largest first (ties in a seeded random order) and each goes to the
    split where it most reduces the squared per-class shortfall, with every class weighted by
    1/its size so rare classes are balanced as well as common ones. Rows keep input order.
    """
    if min(val_fraction, test_fraction) < 0 or val_fraction + test_fraction >= 1:
        raise ValueError(
            f"need val_fraction, test_fraction >= 0 with a sum < 1, got {val_fraction}, "
            f"{test_fraction}"
        )
    groups: dict[Any, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        groups[row[group_key]].append(i)
    out: dict[str, list[dict]] = {name: [] for name in (*SPLITS, "heldout")}
    split_of = [""] * len(rows)

    regular = []
    for key, members in groups.items():
        held = {_truthy(rows[i].get(heldout_key)) if heldout_key else False for i in members}
        if held == {True, False}:
            raise ValueError(f"group {group_key}={key!r} mixes heldout and non-heldout rows")
        if True in held:
            for i in members:
                split_of[i] = "heldout"
        else:
            regular.append(members)

    classes = sorted({rows[i][stratify_key] for g in regular for i in g}, key=str)
    col = {c: k for k, c in enumerate(classes)}
    counts = np.zeros((len(regular), len(classes)))
    for g, members in enumerate(regular):
        for i in members:
            counts[g, col[rows[i][stratify_key]]] += 1
    fractions = np.array([1.0 - val_fraction - test_fraction, val_fraction, test_fraction])
    totals = counts.sum(axis=0)
    target = fractions[:, None] * totals[None, :]
    weight = 1.0 / np.maximum(totals, 1.0)
    current = np.zeros_like(target)

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(regular))
    order = order[np.argsort(-counts[order].sum(axis=1), kind="stable")]
    for g in order:
        v = counts[g]
        # Change of sum_c w_c * (current - target)^2 if the group joins each split.
        delta = ((2.0 * v * (current - target) + v * v) * weight).sum(axis=1)
        s = int(np.argmin(delta))
        current[s] += v
        for i in regular[g]:
            split_of[i] = SPLITS[s]

    for i, row in enumerate(rows):
        out[split_of[i]].append(row)
    return out


def leakage_report(
    splits: Mapping[str, Sequence[dict]],
    *,
    hash_key: str = "sha256",
    phash_key: str = "phash",
    id_key: str = "id",
    max_distance: int = 4,
    dihedral: bool = False,
) -> dict:
    """Exact (same sha256) and near (phash Hamming <= max_distance) duplicates between splits.

    A row's phash is an int, a `format_hash` hex string, or the 8 `phash_dihedral` hashes
    (a list, or hex joined by spaces); with dihedral=True a pair counts if any flip/rotation
    of one matches the other, otherwise only the first (identity) hashes are compared.
    Byte-identical pairs are listed under "exact" only. Duplicates inside one split are listed
    under "exact_within" (harmless for leakage, but they inflate that split).
    """
    names = sorted(splits)
    by_sha: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for name in names:
        for row in splits[name]:
            by_sha[row[hash_key]].append((name, str(row[id_key])))
    exact, within = [], []
    exact_pairs: set[tuple[str, str]] = set()
    for members in by_sha.values():
        for (sa, a), (sb, b) in combinations(sorted(members), 2):
            if sa == sb:
                within.append({"a": a, "b": b, "split": sa})
            else:
                exact.append({"a": a, "split_a": sa, "b": b, "split_b": sb})
                exact_pairs.add((a, b))

    near = []
    for sa, sb in combinations(names, 2):
        for a, b, d in _near_pairs(
            splits[sa], splits[sb], phash_key, id_key, max_distance, dihedral
        ):
            if (a, b) not in exact_pairs:
                near.append({"a": a, "split_a": sa, "b": b, "split_b": sb, "distance": d})

    exact.sort(key=lambda p: (p["split_a"], p["a"], p["split_b"], p["b"]))
    within.sort(key=lambda p: (p["split"], p["a"], p["b"]))
    near.sort(key=lambda p: (p["split_a"], p["a"], p["split_b"], p["b"]))
    counts = {
        "rows": {name: len(splits[name]) for name in names},
        "exact_cross": len(exact),
        "exact_within": len(within),
        "near_cross": len(near),
    }
    return {
        "exact": exact,
        "exact_within": within,
        "near": near,
        "ok": not exact and not near,
        "max_distance": max_distance,
        "dihedral": dihedral,
        "counts": counts,
    }


def _near_pairs(
    rows_a: Sequence[dict],
    rows_b: Sequence[dict],
    phash_key: str,
    id_key: str,
    max_distance: int,
    dihedral: bool,
) -> list[tuple[str, str, int]]:
    """Near pairs between two row lists; dihedral: all 8 variants of a against b's identity."""
    a = [
        (str(r[id_key]), parse_hash(h))
        for r in rows_a
        for h in (_hash_list(r[phash_key]) if dihedral else _hash_list(r[phash_key])[:1])
    ]
    b = [(str(r[id_key]), parse_hash(_hash_list(r[phash_key])[0])) for r in rows_b]
    best: dict[tuple[str, str], int] = {}
    for ia, ib, d in near_duplicates(a, b, max_distance):
        best[ia, ib] = min(d, best.get((ia, ib), d))
    return sorted((ia, ib, d) for (ia, ib), d in best.items())


def _hash_list(value: int | str | Sequence[int | str]) -> list[int | str]:
    """A row's hashes (identity first): an int, a hex string, a list, or a space/';' list."""
    if isinstance(value, int):
        return [value]
    if isinstance(value, str):
        return value.replace(";", " ").split()
    return list(value)


def _truthy(value: Any) -> bool:
    """CSV-safe truth: the string 'False' is false."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "y")
    return bool(value)


def phase_items(rows: Sequence[Mapping], root: Path, taxonomy: Taxonomy, phase: str
                ) -> list[tuple[str, int]]:
    """(absolute path, phase class index) for split rows, through the fine→phase table: the
    one place synthetic rows get a phase's labels."""
    classes = taxonomy.phase(phase).classes
    return [
        (str(root / r["path"]), classes.index(taxonomy.map_fine(r["fine_class"], phase)))
        for r in rows
    ]
