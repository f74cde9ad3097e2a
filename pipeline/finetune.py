"""Adapting models to a phase's real images: the library under finetune_real and bench_real.

Every function takes plain arguments and returns values; callers decide what to log and
where to write. The pieces:
- `ModelSpec` / `FitOptions`: what to build and how to train it;
- `start_model`: a fresh model (ImageNet weights where offline packages have them) or a
  trained checkpoint moved to the phase's classes (head surgery, frozen first blocks);
- `adapt`: train on real images (plus a replay share of synthetic ones), early-stopped on
  the real validation split;
- `hardest`: the synthetic images the starting model finds hardest (the replay buffer);
- `reestimate_batchnorm`: batch-norm statistics of the target images (unlabelled real ones);
- `prepare_for_int8`: activation equalization and weights on the int8 grid before export.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.data.datamodule import SEMDataModule
from pipeline.data.style import StyleTransfer
from pipeline.files import sha256_file
from pipeline.models.classifier import SEMClassifier, checkpoint_preprocess
from pipeline.models.equalize import equalizable, equalize_activation_ranges
from pipeline.models.int8_grid import snap_weights_to_int8_grid
from pipeline.models.preprocess import Preprocess
from pipeline.models.surgery import transfer_weights
from pipeline.training import (
    CPU_TRAINER,
    FitResult,
    Items,
    fit,
    image_batches,
    loss_config,
    predict_probs,
    replace_weights,
)


@dataclass(frozen=True)
class ModelSpec:
    """A network to build from scratch (or from ImageNet weights with pretrained=True)."""

    name: str
    image_size: int
    pretrained: bool = False
    drop_rate: float = 0.0
    head_features: int | None = None

    @classmethod
    def from_config(cls, m: Mapping) -> ModelSpec:
        return cls(m["name"], m["image_size"], m.get("pretrained", False),
                   m.get("drop_rate", 0.0), m.get("head_features"))


@dataclass(frozen=True)
class FitOptions:
    """How to train on a phase's images (finetune config + the shared train/trainer keys)."""

    lr: float = 1e-3
    weight_decay: float = 0.02
    warmup_epochs: float = 1
    max_epochs: int = 20
    batch_size: int = 32
    patience: int = 5
    seed: int = 0
    freeze_blocks: int = 0
    class_weights: str | list = "inverse"
    replay_fraction: float = 0.25
    loss: Mapping = field(default_factory=lambda: {"name": "ce", "label_smoothing": 0.1})
    augment: Mapping = field(default_factory=lambda: {"enabled": True})
    num_workers: int = 0
    trainer: Mapping = field(default_factory=lambda: dict(CPU_TRAINER))

    @classmethod
    def from_config(cls, cfg: Mapping, section: Mapping | None = None) -> FitOptions:
        """From params: `section` (default cfg["finetune"]) for the schedule, cfg["train"] for
        the loss, augmentation and workers, cfg["trainer"] for the hardware."""
        ft = cfg["finetune"] if section is None else section
        return cls(lr=ft["lr"], weight_decay=ft["weight_decay"], warmup_epochs=ft["warmup_epochs"],
                   max_epochs=ft["max_epochs"], batch_size=ft["batch_size"],
                   patience=ft["early_stopping_patience"], seed=ft["seed"],
                   freeze_blocks=ft.get("freeze_blocks", 0),
                   class_weights=ft.get("class_weights", "none"),
                   replay_fraction=cfg["finetune"]["replay"]["fraction"],
                   loss=dict(cfg["train"]["loss"]), augment=dict(cfg["train"]["augment"]),
                   num_workers=cfg["train"]["num_workers"], trainer=dict(cfg["trainer"]))

    def with_(self, **changes) -> FitOptions:
        return replace(self, **changes)


def start_model(source: ModelSpec | Path, classes: Sequence[str], labels: Sequence[int],
                opts: FitOptions, *, head_sources: Sequence[Sequence[int]] | None = None,
                kd: Mapping | None = None, teacher_ckpt: Path | None = None,
                image_size: int | None = None) -> tuple[SEMClassifier, dict]:
    """The model to train on the phase's images and a record of where it came from.

    `source` is a ModelSpec (a new network) or a SEMClassifier checkpoint, whose weights are
    copied (the classifier rows from `head_sources`, pipeline.models.surgery). Pretrained
    starts (a checkpoint or ImageNet weights) freeze their first `opts.freeze_blocks` units.
    `labels` (the train labels) set the class weights. `kd`: distillation config, from
    `teacher_ckpt` run on every batch or from teacher logits the batches carry.
    `image_size` moves a checkpoint start to another input size (the networks pool
    globally, so the weights fit any size)."""
    common = {"loss": loss_config({**opts.loss, "class_weights": opts.class_weights}, labels,
                                  len(classes)),
              "optimizer": {"lr": opts.lr, "weight_decay": opts.weight_decay,
                            "warmup_epochs": opts.warmup_epochs},
              "max_epochs": opts.max_epochs, "kd": dict(kd) if kd else None,
              "teacher_ckpt": str(teacher_ckpt) if teacher_ckpt else None}
    if isinstance(source, ModelSpec):
        model = SEMClassifier(source.name, len(classes), list(classes),
                              Preprocess(source.image_size).to_dict(),
                              pretrained=source.pretrained, drop_rate=source.drop_rate,
                              head_features=source.head_features, **common)
        if source.pretrained:
            model.freeze_first_units(opts.freeze_blocks)
        return model, {"init": "imagenet" if source.pretrained else "scratch",
                       "backbone": source.name}
    start = SEMClassifier.load_from_checkpoint(source, map_location="cpu", weights_only=True)
    hp = start.hparams
    preprocess = dict(hp.preprocess)
    if image_size is not None:
        preprocess["image_size"] = image_size
    model = SEMClassifier(hp.backbone, len(classes), list(classes), preprocess,
                          drop_rate=hp.drop_rate, head_features=hp.get("head_features"), **common)
    sources = head_sources if head_sources is not None else [[] for _ in classes]
    record = transfer_weights(start.net, model.net, sources)
    model.freeze_first_units(opts.freeze_blocks)
    return model, {"init": "checkpoint", "backbone": hp.backbone,
                   "checkpoint_sha256": sha256_file(source), **record}


def adapt(model: SEMClassifier, train: Items, val: Items, out_file: Path, opts: FitOptions, *,
          replay: Items = (), extra_val: Mapping[str, Items] | None = None,
          style: StyleTransfer | None = None, logger=None) -> FitResult:
    """Train `model` on `train` (with `opts.replay_fraction` of each batch from `replay`),
    early-stopped on val macro-F1; the best weights go to `out_file`. `style` restyles the
    train images (synthetic ones) toward real images."""
    size = model.pp.image_size
    if model.hparams.teacher_ckpt:  # one batch feeds both models; each resizes on-tensor
        size = max(size, checkpoint_preprocess(model.hparams.teacher_ckpt).image_size)
    datamodule = SEMDataModule(
        train, {"val": val, **{k: v for k, v in (extra_val or {}).items() if v}},
        size, augment=dict(opts.augment), batch_size=opts.batch_size,
        num_workers=opts.num_workers, seed=opts.seed, sampler="shuffle", replay=list(replay),
        replay_fraction=opts.replay_fraction, style=style)
    return fit(model, datamodule, trainer_cfg=opts.trainer, max_epochs=opts.max_epochs,
               patience=opts.patience, out_file=out_file, logger=logger)


@torch.no_grad()
def hardest(model: SEMClassifier, items: Items, size: int) -> Items:
    """The `size` items with the highest loss under `model` (in their original order)."""
    if size <= 0 or not items:
        return []
    probs = predict_probs(model, items)
    labels = torch.tensor([y for _, y in items])
    losses = F.nll_loss(torch.log(torch.from_numpy(probs).clamp_min(1e-12)), labels,
                        reduction="none").numpy()
    keep = np.argsort(-losses, kind="stable")[:size]
    return [items[i] for i in sorted(keep.tolist())]


@torch.no_grad()
def reestimate_batchnorm(model: SEMClassifier, images: Sequence[str], *,
                         batch_size: int = 32) -> int:
    """Replace every BatchNorm's running mean and variance by their statistics on `images`
    (unlabelled target-domain images, the model's own preprocessing), leaving every weight as
    it was; the caller writes the checkpoint. Returns how many layers changed.

    The statistics are per batch, as in training, and averaged over all batches (momentum
    None), so they do not depend on the momentum the model was trained with."""
    norms = [m for m in model.net.modules()
             if isinstance(m, torch.nn.BatchNorm1d | torch.nn.BatchNorm2d)]
    if not norms or not images:
        return 0
    model.eval()
    saved = [(m.momentum, m.training) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        for x in image_batches([(p, 0) for p in images], model.pp, batch_size):
            model(x)
    finally:
        for m, (momentum, training) in zip(norms, saved, strict=True):
            m.momentum = momentum
            m.train(training)
    return len(norms)


def prepare_for_int8(result: FitResult, val: Items, calibration_pool: Items, *,
                     equalize_images: int, weight_grid: bool, seed: int) -> dict:
    """Equalize activation ranges (plain CNNs; exact) and round weights to the per-channel
    int8 grid, in the model and its checkpoint. Returns the share of val predictions that
    kept their class (rounding is the cost) and each equalized block's median channel range
    as a share of the block's maximum."""
    net, facts = result.model.eval().net, {}
    equalize = bool(equalize_images) and equalizable(net)
    if not equalize and not weight_grid:
        return {}
    before = predict_probs(result.model, val).argmax(1)
    if equalize:
        rng = np.random.default_rng(seed)
        pick = rng.choice(len(calibration_pool), min(equalize_images, len(calibration_pool)),
                          replace=False)
        images = [calibration_pool[i] for i in sorted(pick.tolist())]
        shares = equalize_activation_ranges(net, image_batches(images, result.model.pp))
        facts.update({f"equalize_block{i}_median_channel_share": v for i, v in enumerate(shares)})
    if weight_grid:
        snap_weights_to_int8_grid(net)
    replace_weights(result.model, result.checkpoint)
    after = predict_probs(result.model, val).argmax(1)
    return {"int8_grid_val_top1_agreement": float((before == after).mean()), **facts}
