"""Seed derivation: every random stream comes from numpy SeedSequence keyed by names/ints."""

from __future__ import annotations

import zlib

import numpy as np


def _key_ints(keys: tuple[object, ...]) -> list[int]:
    # str keys hash stably (crc32), unlike Python's salted hash().
    return [k if isinstance(k, int) else zlib.crc32(str(k).encode()) for k in keys]


def seed_int(*keys: object) -> int:
    """A 63-bit integer seed derived from the keys (order matters)."""
    return int(np.random.SeedSequence(_key_ints(keys)).generate_state(2, np.uint64)[0] >> 1)


def make_rng(*keys: object) -> np.random.Generator:
    """A PCG64 generator seeded from the keys."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(_key_ints(keys))))


def loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def pick(rng: np.random.Generator, rng_range: tuple[float, float]) -> float:
    """Uniform draw from a (lo, hi) range."""
    return float(rng.uniform(rng_range[0], rng_range[1]))
