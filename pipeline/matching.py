"""Function matching (Beyer et al. 2022, "Knowledge distillation: a good teacher is patient and
consistent"): the student learns the teacher's output on the same augmented, mixed-up view of
a broad transfer set (real train images, unlabelled real images, synthetic images), with a KL
loss and a long schedule.

On CPU the teacher's forward pass per view is the cost. Views are deterministic functions of
(image, epoch) (pipeline.data.datamodule.MixupViews), so the teacher's outputs are computed
once per view before training (in onnxruntime, see Teacher) and cached on disk by a key of
everything they depend on: reruns, resumed runs and other students of the same teacher reuse
them, and the views are regenerated rather than stored. The student then trains at its own speed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.progress import Progress
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from pipeline.data.datamodule import EpochSampler, MixupViews, SEMDataModule
from pipeline.data.images import read_gray8, to_model_input
from pipeline.data.transforms import build_augment
from pipeline.export.onnx_export import onnx_session, run_onnx
from pipeline.files import sha256_file, write_bytes
from pipeline.finetune import FitOptions, ModelSpec, start_model
from pipeline.models.classifier import SEMClassifier, load_classifier
from pipeline.training import CPU_TRAINER, FitResult, Items, fit

log = logging.getLogger(__name__)
UNLABELLED = -1  # label of transfer items without one (unlabelled real, other taxonomies)
VIEW_RUNTIME = "onnxruntime"  # runs the teacher over the views (see Teacher)


@dataclass(frozen=True)
class MatchOptions:
    """The distillation schedule. temperature 1 and mixup with a uniform mixing weight
    (mixup_alpha 1) follow the paper; label_weight > 0 adds the hard loss on labelled views."""

    epochs: int = 40
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.02
    warmup_epochs: float = 1
    temperature: float = 1.0
    mixup_alpha: float = 1.0
    label_weight: float = 0.0
    balance: bool = True
    keep: str = "best"  # the epoch delivered: best val macro-F1, or "last"
    seed: int = 0
    augment: Mapping = field(default_factory=lambda: {"enabled": True})
    num_workers: int = 0
    trainer: Mapping = field(default_factory=lambda: dict(CPU_TRAINER))

    @classmethod
    def from_config(cls, m: Mapping, cfg: Mapping) -> MatchOptions:
        """From finetune.matching (`m`) plus train.augment/num_workers and trainer."""
        return cls(epochs=m["epochs"], batch_size=m["batch_size"], lr=m["lr"],
                   weight_decay=m["weight_decay"], warmup_epochs=m["warmup_epochs"],
                   temperature=m["temperature"], mixup_alpha=m["mixup_alpha"],
                   label_weight=m["label_weight"], balance=m["balance"], keep=m["keep"],
                   seed=m["seed"],
                   augment=dict(cfg["train"]["augment"]), num_workers=cfg["train"]["num_workers"],
                   trainer=dict(cfg["trainer"]))


class Teacher(nn.Module):
    """One or more classifiers as one teacher: the log of their mean softmax (the ensemble's
    distribution, a valid logit vector), each model fed at its own input size. With
    `dihedral`, also averaged over the 8 flips and 90-degree rotations (test-time
    augmentation; SEM images have no preferred orientation). `runtime` "onnxruntime" runs
    the members' networks there (equal to torch within float rounding, 3.5x faster on 2 CPU cores:
    the teacher pass over every view is function matching's cost)."""

    RUNTIMES = ("torch", "onnxruntime")

    def __init__(self, models: Sequence[SEMClassifier], dihedral: bool = False,
                 runtime: str = "torch") -> None:
        super().__init__()
        if runtime not in self.RUNTIMES:
            raise ValueError(f"teacher runtime {runtime!r}: one of {self.RUNTIMES}")
        if not models:
            raise ValueError("a teacher needs at least one model")
        names = [list(m.hparams.class_names) for m in models]
        if any(n != names[0] for n in names):
            raise ValueError(f"teacher models disagree on the classes: {names}")
        self.members = nn.ModuleList(m.eval().requires_grad_(False) for m in models)
        self.class_names = names[0]
        self.image_size = max(m.pp.image_size for m in models)
        self.dihedral = dihedral
        self.runtime = runtime
        self._sessions = [onnx_session(m.net, m.pp.image_size) for m in self.members
                          ] if runtime == "onnxruntime" else None

    @classmethod
    def from_checkpoints(cls, paths: Sequence[Path], dihedral: bool = False) -> Teacher:
        return cls([load_classifier(p) for p in paths], dihedral)

    def on_runtime(self, runtime: str) -> Teacher:
        """The same teacher (shared weights) run by `runtime`."""
        return Teacher(list(self.members), self.dihedral, runtime)

    def _logits(self, i: int, x: Tensor) -> Tensor:
        member = self.members[i]
        x = member.pp.fit_tensor(x)
        if self._sessions is None:
            return member(x)
        return torch.from_numpy(run_onnx(self._sessions[i], x.contiguous().numpy()))

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        views = [x] if not self.dihedral else [
            v for k in range(4) for v in (torch.rot90(x, k, (2, 3)),
                                          torch.rot90(x, k, (2, 3)).flip(3))]
        probs = torch.stack([torch.softmax(self._logits(i, v), 1)
                             for i in range(len(self.members)) for v in views]).mean(0)
        return probs.clamp_min(1e-8).log()


def teacher_logits(teacher: nn.Module, items: Items, image_size: int,
                   batch_size: int = 64) -> np.ndarray:
    """The teacher's logits for (unaugmented) items, resized to `image_size` as training does."""
    out = []
    for start in range(0, len(items), batch_size):
        x = np.stack([to_model_input(read_gray8(Path(p)), image_size)
                      for p, _ in items[start: start + batch_size]])
        out.append(teacher(torch.from_numpy(x).float().div_(255.0)[:, None]).numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def transfer_set(real_train: Items, unlabeled: Sequence[str], synthetic: Items, n_synthetic: int,
                 seed: int) -> Items:
    """The distillation transfer set: every real train image (with its label), every
    unlabelled real image and `n_synthetic` synthetic images drawn at random (both with
    label UNLABELLED: their labels are in no use, or another taxonomy)."""
    rng = np.random.default_rng([seed, 5])
    pick = sorted(rng.choice(len(synthetic), min(n_synthetic, len(synthetic)),
                             replace=False).tolist()) if synthetic else []
    return ([(str(p), int(y)) for p, y in real_train]
            + [(str(p), UNLABELLED) for p in unlabeled]
            + [(str(synthetic[i][0]), UNLABELLED) for i in pick])


def balance_classes(teacher_pred: np.ndarray, classes: int) -> dict:
    """How a balanced sampler sees the transfer set: per predicted class, the count and the
    share of draws it gets (equal for every predicted class present)."""
    counts = np.bincount(teacher_pred, minlength=classes)
    present = counts > 0
    return {"teacher_predicted_counts": counts.tolist(),
            "draw_share_per_class": np.where(present, 1.0 / present.sum(), 0.0).round(4).tolist()}


class _Keys(Dataset):
    def __init__(self, views: MixupViews, keys: Sequence[tuple[int, int]]) -> None:
        self.views, self.keys = views, list(keys)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, k: int) -> Tensor:
        return self.views[self.keys[k]][0]


class _Targets(Dataset):
    """A view, a label (the item's own, else the teacher's class on that view) and the
    teacher's logits on it."""

    def __init__(self, views: MixupViews, targets: Mapping[tuple[int, int], np.ndarray]) -> None:
        self.views, self.targets = views, targets

    def __len__(self) -> int:
        return len(self.views)

    def __getitem__(self, key: tuple[int, int]) -> tuple:
        x, label = self.views[key]
        logits = torch.from_numpy(self.targets[key])
        return x, label if label != UNLABELLED else int(logits.argmax()), logits


class MatchDataModule(SEMDataModule):
    """SEMDataModule whose train loader serves the cached teacher outputs with their views."""

    def __init__(self, views: MixupViews, sampler: EpochSampler,
                 targets: Mapping[tuple[int, int], np.ndarray], val: Mapping[str, Items],
                 opts: MatchOptions) -> None:
        super().__init__(views.base.items, dict(val), views.base.image_size, augment=dict(
            opts.augment), batch_size=opts.batch_size, num_workers=opts.num_workers,
            seed=opts.seed)
        self.views, self.epoch_sampler, self.targets = views, sampler, targets

    def train_dataloader(self) -> DataLoader:
        return self._loader(_Targets(self.views, self.targets), sampler=self.epoch_sampler,
                            drop_last=len(self.views) > self.batch_size)


def view_keys(sampler: EpochSampler, epochs: int) -> list[tuple[int, int]]:
    """Every (index, epoch) key the sampler will draw in `epochs` epochs, each once."""
    keys = set()
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        keys.update(iter(sampler))
    sampler.set_epoch(0)
    return sorted(keys)


def cached_teacher_views(teacher: nn.Module, views: MixupViews, keys: list[tuple[int, int]],
                         cache_key: str, cache_dir: Path | None, batch_size: int = 128,
                         num_workers: int = 0) -> dict[tuple[int, int], np.ndarray]:
    """The teacher's logits on every keyed view, from `cache_dir/<cache_key>.npy` when there."""
    path = Path(cache_dir) / f"teacher_views-{cache_key}.npy" if cache_dir else None
    if path is not None and path.is_file():
        logits = np.load(path)
        if len(logits) == len(keys):
            log.info("teacher outputs for %d views from %s", len(keys), path)
            return dict(zip(keys, logits, strict=True))
    loader = DataLoader(_Keys(views, keys), batch_size=batch_size, num_workers=num_workers)
    chunks = []
    with Progress(transient=True) as progress:
        task = progress.add_task(f"teacher on {len(keys)} views", total=len(keys))
        for x in loader:
            chunks.append(teacher(x).numpy().astype(np.float32))
            progress.advance(task, len(x))
    logits = np.concatenate(chunks)
    if path is not None:
        import io

        buffer = io.BytesIO()
        np.save(buffer, logits)
        write_bytes(path, buffer.getvalue())
    return dict(zip(keys, logits, strict=True))


def match(teacher: Teacher, student_source: ModelSpec | Path, transfer: Items, val: Items,
          out_file: Path, opts: MatchOptions, *, teacher_id: str,
          head_sources: Sequence[Sequence[int]] | None = None, cache_dir: Path | None = None,
          logger=None) -> tuple[FitResult, dict]:
    """Train a student (a new network, or a checkpoint moved to the teacher's classes with
    `head_sources`) to match `teacher` on views of `transfer`. Early stopping is off (a
    patient schedule); the epoch with the best val macro-F1 is kept, or the last one
    (opts.keep).

    `teacher_id` names the teacher's weights (see `teacher_id`) for the cache key. Returns
    the fit result and a record of the transfer set, its balance and the student's start."""
    classes = teacher.class_names
    fit_opts = FitOptions(lr=opts.lr, weight_decay=opts.weight_decay,
                          warmup_epochs=opts.warmup_epochs, max_epochs=opts.epochs,
                          batch_size=opts.batch_size, patience=opts.epochs, seed=opts.seed,
                          class_weights="none", augment=opts.augment,
                          num_workers=opts.num_workers, trainer=opts.trainer)
    kd = {"temperature": opts.temperature, "alpha": 1.0 - opts.label_weight,
          "teacher_logits": "cached"}
    student, start = start_model(student_source, classes, [y for _, y in transfer if y >= 0],
                                 fit_opts, head_sources=head_sources, kd=kd)
    size = max(student.pp.image_size, teacher.image_size)
    views = MixupViews(transfer, size, build_augment(dict(opts.augment), size), opts.seed,
                       opts.mixup_alpha)
    pred = teacher_logits(teacher, transfer, size).argmax(1)
    sampler = EpochSampler(pred.tolist(), opts.seed, balanced=opts.balance)
    keys = view_keys(sampler, opts.epochs)
    digest = hashlib.sha256(json.dumps({
        "teacher": teacher_id, "items": [(p, y) for p, y in transfer], "size": size,
        "augment": dict(opts.augment), "mixup_alpha": opts.mixup_alpha, "seed": opts.seed,
        "epochs": opts.epochs, "balance": opts.balance, "runtime": VIEW_RUNTIME},
        sort_keys=True).encode()).hexdigest()
    targets = cached_teacher_views(teacher.on_runtime(VIEW_RUNTIME), views, keys, digest[:16],
                                   cache_dir, num_workers=opts.num_workers)
    datamodule = MatchDataModule(views, sampler, targets, {"val": val}, opts)
    result = fit(student, datamodule, trainer_cfg=opts.trainer, max_epochs=opts.epochs,
                 patience=opts.epochs, out_file=out_file, logger=logger, keep=opts.keep)
    record = {"transfer_images": len(transfer),
              "labelled": sum(y != UNLABELLED for _, y in transfer),
              "views": len(keys), "teacher_cache_key": digest[:16], "student_start": start,
              **balance_classes(pred, len(classes))}
    return result, record


def teacher_id(paths: Sequence[Path], dihedral: bool = False) -> str:
    """A stable name for a teacher built from checkpoints (for the view cache key)."""
    return json.dumps({"sha256": [sha256_file(p) for p in paths], "dihedral": dihedral})


def options_record(opts: MatchOptions) -> dict:
    return {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in asdict(opts).items()}
