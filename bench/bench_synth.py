"""Synthetic-image throughput at 128 px: single process and with N workers.

Usage (from the repo root): PYTHONPATH=. python bench/bench_synth.py [images_per_class] [workers]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from pipeline.synth import DEFAULT_HELDOUT_PROFILES, FINE_CLASSES, PROFILES, build_dataset


def run(per_class: int, workers: int) -> float:
    profiles = [p for p in PROFILES if p not in DEFAULT_HELDOUT_PROFILES]
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        rows = build_dataset(Path(tmp), classes=FINE_CLASSES, profiles=profiles,
                             heldout_profiles=DEFAULT_HELDOUT_PROFILES,
                             images_per_class=per_class, heldout_images_per_class=0,
                             image_size=128, supersample=2, seed=0, workers=workers,
                             progress=False)
        return len(rows) / (time.perf_counter() - t)


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    w = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    print(f"1 worker : {run(n, 1):6.1f} images/s ({n * len(FINE_CLASSES)} images, 128 px, ss 2)")
    print(f"{w} workers: {run(n, w):6.1f} images/s (includes process start-up)")
