"""The LightningModule for plain training and for distillation from a frozen teacher.

`self.net` is the deployable network: Normalize (from Preprocess) → backbone, taking a [0, 1]
image of `preprocess.image_size`. Batches carry [0, 1] images; when the datamodule serves a
larger size than a model needs (distilling from a teacher with a bigger input), each model
resizes the batch on-tensor to its own size (`Preprocess.fit_tensor`).

The teacher is loaded in `setup("fit")`, not in `__init__`, and is kept out of the module's
registered children: it is never optimised, never saved in the student's checkpoint, and
loading the student later (for evaluation or export) does not need the teacher's file.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
)

from pipeline.errors import UserError
from pipeline.models.backbones import build_backbone
from pipeline.models.losses import build_hard_loss, kd_loss
from pipeline.models.preprocess import Normalize, Preprocess

_LOSS_KEYS = {"name", "label_smoothing", "gamma", "alpha", "class_weights"}


class SEMClassifier(L.LightningModule):
    """Image classifier; with `teacher_ckpt` (or teacher logits cached in the batches), trained
    on alpha * KD + (1 - alpha) * hard loss.

    loss: {name: ce|focal, label_smoothing, gamma, alpha, class_weights: list | None}
    optimizer: {lr, weight_decay, warmup_epochs}; kd: {temperature, alpha[, teacher_logits]}:
    with teacher_logits "cached" the batches carry the teacher's logits and the teacher file
    is recorded but not loaded.
    Validation metrics are torchmetrics objects per loader name, so under DDP they are summed
    over every rank before they are logged; macro-F1 has the definition of
    `pipeline.evaluate.metrics.classification_metrics`.
    After validation, `last_confusion[loader_name]` holds the confusion matrix (rows = true).
    """

    def __init__(
        self,
        backbone: str,
        num_classes: int,
        class_names: list[str],
        preprocess: dict,
        *,
        pretrained: bool = False,
        drop_rate: float = 0.0,
        head_features: int | None = None,
        loss: dict,
        optimizer: dict,
        max_epochs: int,
        teacher_ckpt: str | None = None,
        kd: dict | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if len(class_names) != num_classes:
            raise UserError(f"model: {len(class_names)} class names for num_classes={num_classes}")
        unknown = set(loss) - _LOSS_KEYS
        if unknown:
            raise UserError(f"loss: unknown keys {sorted(unknown)}; allowed: {sorted(_LOSS_KEYS)}")
        if teacher_ckpt is not None and not kd:
            raise UserError("distillation needs kd.temperature and kd.alpha; set the kd config")
        self.pp = Preprocess.from_dict(preprocess)
        self.net = nn.Sequential(
            OrderedDict(
                normalize=Normalize(self.pp.mean, self.pp.std),
                backbone=build_backbone(
                    backbone, num_classes, pretrained=pretrained, drop_rate=drop_rate,
                    head_features=head_features,
                ),
            )
        )
        self.net.to(memory_format=torch.channels_last)
        smallest = getattr(self.net.backbone, "min_input_size", 0)
        if self.pp.image_size < smallest:
            raise UserError(f"model {backbone} needs image_size >= {smallest} (its pooling would "
                            f"shrink a {self.pp.image_size} px input to nothing); raise "
                            "image_size or pick another backbone")
        weights = loss.get("class_weights")
        self.hard_loss = build_hard_loss(
            loss.get("name", "ce"),
            label_smoothing=loss.get("label_smoothing", 0.0),
            gamma=loss.get("gamma", 2.0),
            alpha=loss.get("alpha"),
            class_weights=None if weights is None else torch.tensor(weights, dtype=torch.float32),
        )
        self.teacher: SEMClassifier | None = None  # plain attribute, see module docstring
        self.last_confusion: dict[str, np.ndarray] = {}
        # Per validation loader name, filled in setup (names from the datamodule) so they move
        # with the module to its device; metric states are not persistent, so checkpoints do
        # not change.
        self.val_scores = nn.ModuleDict()  # MetricCollection: acc, macro_f1, confusion
        self.val_loss = nn.ModuleDict()  # MeanMetric of the per-image cross-entropy
        self._val_seen: list[str] = []  # loader names validated this epoch, in order

    def __setattr__(self, name: str, value: object) -> None:
        if name == "teacher":  # bypass nn.Module registration: not a child, not in state_dict
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def forward(self, x: Tensor) -> Tensor:
        """Logits for a [0, 1] batch (B, 1, S, S) at this model's image size."""
        # Channels-last (input and weights, see __init__) runs the CPU convolutions 1.5-2x
        # faster (measured on the teachers and edge_cnn). One layout everywhere: a layout
        # change picks other kernels, whose float rounding differs.
        return self.net(x.contiguous(memory_format=torch.channels_last))

    # ---- distillation -------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        datamodule = self._trainer.datamodule if self._trainer is not None else None
        for name in getattr(datamodule, "val_names", None) or ():
            self._val_metrics(name)
        cached = (self.hparams.kd or {}).get("teacher_logits") == "cached"
        if stage == "fit" and self.hparams.teacher_ckpt and self.teacher is None and not cached:
            self.teacher = load_teacher(self.hparams.teacher_ckpt, self.hparams.class_names)

    def on_fit_start(self) -> None:
        if self.teacher is not None:
            self.teacher.to(self.device)

    # ---- training -----------------------------------------------------------------------
    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        x, y, *cached = batch  # cached: the teacher's logits for these images, if precomputed
        logits = self(self.pp.fit_tensor(x))
        loss = self.hard_loss(logits, y)
        teacher_logits = cached[0] if cached else None
        if teacher_logits is None and self.teacher is not None:
            with torch.no_grad():
                teacher_logits = self.teacher(self.teacher.pp.fit_tensor(x))
        if teacher_logits is not None:
            if not self.hparams.kd:
                raise UserError("batches carry teacher logits but the model has no kd config")
            kd = kd_loss(logits, teacher_logits, float(self.hparams.kd["temperature"]))
            self.log_dict(
                {"train/hard_loss": loss, "train/kd_loss": kd},
                on_step=False,
                on_epoch=True,
                batch_size=len(y),
            )
            alpha = float(self.hparams.kd["alpha"])
            loss = alpha * kd + (1.0 - alpha) * loss
        acc = (logits.argmax(1) == y).float().mean()
        self.log_dict(
            {"train/loss": loss, "train/acc": acc},
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            batch_size=len(y),
        )
        return loss

    def configure_optimizers(self) -> dict:
        cfg = self.hparams.optimizer
        # No weight decay on biases and norm parameters (1-D), as usual for AdamW.
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {
                "params": [p for p in params if p.ndim > 1],
                "weight_decay": float(cfg.get("weight_decay", 0.0)),
            },
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
        ]
        opt = torch.optim.AdamW(groups, lr=float(cfg["lr"]))
        # The cosine spans the configured max_epochs; early stopping only cuts it short.
        per_epoch = math.ceil(
            self.trainer.estimated_stepping_batches / max(1, self.trainer.max_epochs)
        )
        total = per_epoch * int(self.hparams.max_epochs)
        warmup = round(per_epoch * float(cfg.get("warmup_epochs", 0)))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, partial(warmup_cosine, warmup=warmup, total=total)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def freeze_first_units(self, n: int) -> None:
        """Freeze the backbone's first n units (stem, blocks); their BatchNorm stays in eval."""
        from pipeline.models.surgery import freeze_first

        self._frozen = freeze_first(self.net.backbone, n)

    def on_train_epoch_start(self) -> None:
        for unit in getattr(self, "_frozen", ()):
            unit.eval()  # Lightning puts every module in train mode at each epoch start

    # ---- evaluation ---------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        for metric in (*self.val_scores.values(), *self.val_loss.values()):
            metric.reset()
        self._val_seen = []

    def validation_step(
        self, batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        x, y = batch
        logits = self(self.pp.fit_tensor(x))
        name = self._loader_name(dataloader_idx)
        self._val_metrics(name)
        if name not in self._val_seen:
            self._val_seen.append(name)
        self.val_scores[name].update(logits.argmax(1), y)
        # Plain CE (no smoothing/weights) so val loss is comparable between loss configs.
        self.val_loss[name].update(F.cross_entropy(logits, y, reduction="none"))

    def on_validation_epoch_end(self) -> None:
        # compute() sums the states of every rank. Every rank runs the same loaders (the
        # distributed sampler pads each to equal length, repeating up to world_size - 1
        # images), so all of them join each gather.
        for name in self._val_seen:
            scores = self.val_scores[name].compute()
            self.last_confusion[name] = scores["confusion"].cpu().numpy()
            self.log_dict(
                {
                    f"{name}/loss": self.val_loss[name].compute(),
                    f"{name}/acc": scores["acc"],
                    f"{name}/macro_f1": scores["macro_f1"],
                },
                prog_bar=name == "val",
                # Already equal on every rank; sync_dist (a mean of equal values) only keeps
                # Lightning from warning that epoch-level values are not synchronised.
                sync_dist=True,
            )

    def _val_metrics(self, name: str) -> None:
        """Create the metrics of loader `name` (on the module's device) if it has none."""
        if name in self.val_scores:
            return
        c = self.hparams.num_classes
        self.val_scores[name] = MetricCollection({
            "acc": MulticlassAccuracy(c, average="micro"),  # the default "macro" is not accuracy
            # Macro leaves out a class absent from both targets and predictions (torchmetrics
            # gives it weight 0), as classification_metrics does.
            "macro_f1": MulticlassF1Score(c, average="macro"),
            "confusion": MulticlassConfusionMatrix(c),
        }).to(self.device)
        # "disable": a NaN loss (a diverged model) shows as NaN, not as the mean of the rest.
        self.val_loss[name] = MeanMetric(nan_strategy="disable").to(self.device)

    def _loader_name(self, idx: int) -> str:
        names = getattr(self.trainer.datamodule, "val_names", None)
        if names and idx < len(names):
            return names[idx]
        return "val" if idx == 0 else f"val_{idx}"


def warmup_cosine(step: int, *, warmup: int, total: int) -> float:
    """LR factor: linear warm-up over `warmup` steps, then cosine decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def checkpoint_preprocess(path: str | Path) -> Preprocess:
    """The Preprocess stored in a SEMClassifier checkpoint (e.g. to size a datamodule)."""
    _require_file(path)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return Preprocess.from_dict(ckpt["hyper_parameters"]["preprocess"])


def load_classifier(path: str | Path, hint: str = "train that model first (dvc repro)"
                    ) -> SEMClassifier:
    """A SEMClassifier in eval mode from a checkpoint; UserError naming the file and `hint`
    when it is missing."""
    if not Path(path).is_file():
        raise UserError(f"checkpoint {path} not found; {hint}")
    return SEMClassifier.load_from_checkpoint(path, map_location="cpu", weights_only=True).eval()


def load_teacher(path: str | Path, class_names: list[str]) -> SEMClassifier:
    """A frozen, eval-mode SEMClassifier from `path`, checked to share the class list."""
    _require_file(path)
    teacher = SEMClassifier.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    if list(teacher.hparams.class_names) != list(class_names):
        raise UserError(
            f"teacher checkpoint {path} has classes {teacher.hparams.class_names}, "
            f"the student {class_names}; distil from a teacher of the same taxonomy"
        )
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def _require_file(path: str | Path) -> None:
    if not Path(path).is_file():
        raise UserError(f"checkpoint {path} not found; train that model first (dvc repro)")
