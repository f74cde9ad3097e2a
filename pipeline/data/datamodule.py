"""Lightning DataModule: (path, label) lists → batches of [0, 1] grey images.

Batches are (x float32 [B, 1, S, S] in [0, 1], y long), plus the teacher's cached logits
(float32 [B, C]) when distilling with `teacher_logits`. They are NOT mean/std normalised:
normalisation is the first layer of the network, configured by the model's Preprocess, so
training, evaluation, export and on-device inference share one definition (see
pipeline/models/preprocess.py). Images are centre-cropped and resized exactly as
`Preprocess.__call__` does (`to_model_input`), then augmented.

Reproducibility independent of worker count: the sampler yields (index, epoch) keys, the
order comes from a generator seeded with (seed, epoch), and each sample's augmentation from a
generator seeded with (seed, epoch, index) — no state lives in the workers, so no
worker_init_fn is needed (and calling cv2.setNumThreads in a forked worker deadlocks).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import albumentations as A
import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from pipeline.data.images import read_gray8, to_model_input
from pipeline.data.style import StyleTransfer
from pipeline.data.transforms import build_augment
from pipeline.errors import UserError

SAMPLERS = ("shuffle", "balanced")


class ImageDataset(Dataset):
    """Reads, resizes and (optionally) augments one image per key (index or (index, epoch)).

    With `targets` (one row per item), each sample also carries its row: the teacher's logits
    cached once per image, so distillation does not run the teacher on every batch.
    `preload` decodes every image once, up front (at the model size: 16 KB each at 128 px),
    for datasets read many times over; forked loader workers share the arrays. `style`
    restyles each image toward real ones before the augmentation, from its own per-sample
    generator, so turning it on leaves every other random draw as it was."""

    def __init__(
        self,
        items: list[tuple[str, int]],
        image_size: int,
        augment: A.Compose | None = None,
        seed: int = 0,
        targets: np.ndarray | None = None,
        preload: bool = False,
        style: StyleTransfer | None = None,
    ) -> None:
        if targets is not None and len(targets) != len(items):
            raise ValueError(f"{len(targets)} target rows for {len(items)} items")
        self.items = items
        self.image_size = image_size
        self.augment = augment
        self.seed = seed
        self.style = style
        self.targets = None if targets is None else torch.from_numpy(
            np.asarray(targets, dtype=np.float32))
        self._images = [self._read(i) for i in range(len(items))] if preload else None

    def _read(self, index: int) -> np.ndarray:
        return to_model_input(read_gray8(Path(self.items[index][0])), self.image_size)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        label = self.items[index][1]
        img = self._images[index] if self._images is not None else self._read(index)
        if self.style is not None:
            img = self.style(img, np.random.default_rng([self.seed, epoch, index, 7]))
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, epoch, index])
            self.augment.set_random_state(rng, random.Random(int(rng.integers(2**63))))
            img = self.augment(image=img)["image"]
        x = torch.from_numpy(np.ascontiguousarray(img)).float().div_(255.0)[None]
        return (x, label) if self.targets is None else (x, label, self.targets[index])


# Decode a dataset up front (ImageDataset preload) when it fits in this many bytes: read
# every epoch, decoding costs more than the training step of a small student.
PRELOAD_BYTES = 1 << 30


def _fits_memory(n_images: int, image_size: int) -> bool:
    return n_images * image_size * image_size <= PRELOAD_BYTES


class MixupViews(Dataset):
    """Deterministic training views for function matching: key (index, epoch) gives the same
    pixels on every call, so a teacher's output on a view can be computed once and served
    with it later. The view is the item's augmented image (ImageDataset, seeded per key),
    mixed with the same epoch's view of a partner item, weight lam ~ Beta(alpha, alpha), both
    drawn from (seed, epoch, index). mixup_alpha 0: no mixing. Returns (x, the item's label)."""

    def __init__(self, items: list[tuple[str, int]], image_size: int, augment: A.Compose | None,
                 seed: int, mixup_alpha: float) -> None:
        if mixup_alpha < 0:
            raise UserError(f"mixup_alpha must be >= 0, got {mixup_alpha}")
        self.base = ImageDataset(items, image_size, augment, seed,
                                 preload=_fits_memory(len(items), image_size))
        self.seed, self.alpha = seed, mixup_alpha

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]) -> tuple:
        index, epoch = key
        x, label = self.base[(index, epoch)]
        if self.alpha > 0:
            rng = np.random.default_rng([self.seed, epoch, index, 3])
            partner, lam = int(rng.integers(len(self.base))), float(rng.beta(self.alpha,
                                                                             self.alpha))
            x = lam * x + (1.0 - lam) * self.base[(partner, epoch)][0]
        return x, label


class EpochSampler(Sampler):
    """Seeded per-epoch order yielding (index, epoch); "balanced" draws classes equally often.

    Lightning calls `set_epoch` at the start of every epoch.
    """

    def __init__(self, labels: list[int], seed: int, balanced: bool) -> None:
        self.labels = np.asarray(labels)
        self.seed = seed
        self.balanced = balanced
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.labels)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rng = np.random.default_rng([self.seed, self.epoch, 1])
        n = len(self.labels)
        if self.balanced:  # with replacement, each sample weighted by 1 / its class count
            counts = Counter(self.labels.tolist())
            w = np.array([1.0 / counts[y] for y in self.labels.tolist()])
            order = rng.choice(n, size=n, replace=True, p=w / w.sum())
        else:
            order = rng.permutation(n)
        return iter([(int(i), self.epoch) for i in order])


class MixedBatchSampler(Sampler):
    """Batches of (index, epoch) keys where a fixed share of every batch comes from a replay
    pool (indices >= n_main): fine-tuning keeps seeing synthetic images so it does not forget.
    One epoch is one pass over the main items."""

    def __init__(self, n_main: int, n_replay: int, batch_size: int, replay_fraction: float,
                 seed: int) -> None:
        self.n_main, self.n_replay, self.seed = n_main, n_replay, seed
        self.n_replay_per_batch = min(n_replay, max(1, round(batch_size * replay_fraction)))
        self.n_main_per_batch = max(1, batch_size - self.n_replay_per_batch)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.n_main // self.n_main_per_batch)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        rng = np.random.default_rng([self.seed, self.epoch, 2])
        main = rng.permutation(self.n_main)
        for start in range(0, self.n_main, self.n_main_per_batch):
            replay = self.n_main + rng.choice(self.n_replay, self.n_replay_per_batch, replace=False)
            batch = [*main[start : start + self.n_main_per_batch].tolist(), *replay.tolist()]
            yield [(int(i), self.epoch) for i in batch]


class SEMDataModule(L.LightningDataModule):
    """Train loader plus one named validation loader per entry of `val` (in order)."""

    def __init__(
        self,
        train: list[tuple[str, int]],
        val: dict[str, list[tuple[str, int]]],
        image_size: int,
        *,
        augment: dict,
        batch_size: int,
        num_workers: int,
        seed: int,
        sampler: str = "shuffle",
        replay: list[tuple[str, int]] | None = None,
        replay_fraction: float = 0.0,
        teacher_logits: np.ndarray | None = None,
        style: StyleTransfer | None = None,
    ) -> None:
        super().__init__()
        if not train:
            raise UserError("the training split is empty; check data.splits and the image folders")
        empty = [name for name, items in val.items() if not items]
        if not val or empty:
            raise UserError(f"validation sets {empty or '(none)'} are empty; check the splits")
        if sampler not in SAMPLERS:
            raise UserError(f"train.sampler={sampler!r} is unknown; use one of {SAMPLERS}")
        self.train_items = train
        self.val_items = val
        self.val_names = list(val)
        self.image_size = image_size
        self.augment_cfg = augment
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.sampler = sampler
        self.replay_items = list(replay or [])
        self.replay_fraction = replay_fraction
        self.teacher_logits = teacher_logits
        self.style = style
        if teacher_logits is not None and self.replay_items:
            raise UserError("cached teacher logits cover the train items only, not a replay pool")

    def train_dataloader(self) -> DataLoader:
        augment = build_augment(self.augment_cfg, self.image_size)
        if self.replay_items and self.replay_fraction > 0:
            ds = ImageDataset(self.train_items + self.replay_items, self.image_size, augment,
                              self.seed, preload=_fits_memory(len(self.train_items)
                                                              + len(self.replay_items),
                                                              self.image_size), style=self.style)
            batches = MixedBatchSampler(len(self.train_items), len(self.replay_items),
                                        self.batch_size, self.replay_fraction, self.seed)
            return DataLoader(ds, batch_sampler=batches, num_workers=self.num_workers)
        ds = ImageDataset(self.train_items, self.image_size, augment, self.seed,
                          targets=self.teacher_logits, style=self.style,
                          preload=_fits_memory(len(self.train_items), self.image_size))
        sampler = EpochSampler(
            [y for _, y in self.train_items], self.seed, self.sampler == "balanced"
        )
        # drop_last avoids a size-1 batch, which BatchNorm cannot normalise at 1x1 resolution.
        return self._loader(ds, sampler=sampler, drop_last=len(ds) > self.batch_size)

    def val_dataloader(self) -> list[DataLoader]:
        return [
            self._loader(ImageDataset(self.val_items[name], self.image_size, preload=_fits_memory(
                len(self.val_items[name]), self.image_size)))
            for name in self.val_names
        ]

    def _loader(self, ds: Dataset, **kwargs: object) -> DataLoader:
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,  # no respawn (and re-fork) per epoch
            generator=torch.Generator().manual_seed(self.seed),
            **kwargs,
        )
