"""Folds for judging recipes on a small labelled real set (bench/bench_real.py).

A 151-image validation split has a standard error of about 4 points, so recipes are compared
by k-fold means. Two groupings keep a fold's test images honest:
- near-dup: images that are near-duplicates under any flip or rotation (pipeline.data.real)
  stay in one fold, as in finetune_real's train/val split;
- appearance: whole clusters of similar-looking images (k-means on frozen ImageNet features)
  are held out together, a proxy for images from sources the model never saw. Near-duplicate
  groups are merged into the clusters they touch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.cluster import KMeans
from sklearn.model_selection import StratifiedGroupKFold

from pipeline.data.real import union_groups

GROUPINGS = ("near-dup", "appearance")


def grouped_folds(labels: Sequence[int], groups: Sequence[int], folds: int, seed: int
                  ) -> list[np.ndarray]:
    """Test indices of each of `folds` folds: stratified by label as far as the groups allow,
    every group inside one fold, each image in exactly one fold."""
    labels, groups = np.asarray(labels), np.asarray(groups)
    if len(set(groups.tolist())) < folds:
        raise ValueError(f"{len(set(groups.tolist()))} groups cannot fill {folds} folds")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [test for _, test in splitter.split(np.zeros(len(labels)), labels, groups)]


def appearance_groups(features: np.ndarray, near_dup_groups: Sequence[int], clusters: int,
                      seed: int) -> list[int]:
    """A group per image: its k-means cluster (cosine geometry) merged with every cluster its
    near-duplicates fall in."""
    unit = features / np.linalg.norm(features, axis=1, keepdims=True).clip(1e-12)
    assigned = KMeans(n_clusters=clusters, n_init=10, random_state=seed).fit_predict(unit)
    n = len(assigned)
    pairs = [(i, j) for group in _members(near_dup_groups).values() for i, j in
             zip(group, group[1:], strict=False)]
    pairs += [(i, j) for group in _members(assigned.tolist()).values() for i, j in
              zip(group, group[1:], strict=False)]
    return union_groups(n, pairs)


def _members(groups: Sequence[int]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        out.setdefault(int(g), []).append(i)
    return out
