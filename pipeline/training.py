"""Fit and score SEMClassifier models: the loop shared by every training stage.

Takes plain arguments and returns values; the stages decide what to log and where to write.
"""

from __future__ import annotations

import io
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from torch import Tensor
from torch.utils.data import DataLoader

from pipeline.data.datamodule import ImageDataset, SEMDataModule
from pipeline.evaluate.metrics import classification_metrics
from pipeline.files import write_bytes
from pipeline.models.classifier import SEMClassifier
from pipeline.models.losses import class_weights_from_counts
from pipeline.models.preprocess import Preprocess

Items = list[tuple[str, int]]
MONITOR = "val/macro_f1"
KEEP = ("best", "last")  # which epoch's weights fit() delivers
# The trainer config (conf/trainer/cpu.yaml) for callers that build options by hand.
CPU_TRAINER = {"accelerator": "cpu", "devices": 1, "num_nodes": 1, "strategy": "auto",
               "precision": "32-true", "deterministic": True}
# Lightning checkpoint entries that only matter for resuming; the delivered file drops them.
_RESUME_ONLY = ("optimizer_states", "lr_schedulers", "loops", "callbacks")


def loss_config(loss: Mapping, labels: Sequence[int], num_classes: int) -> dict:
    """The model's loss dict: `class_weights` none|inverse|sqrt_inverse|effective|[list]."""
    weights = loss.get("class_weights", "none")
    out = {k: v for k, v in loss.items() if k != "class_weights"}
    if isinstance(weights, str) and weights != "none":
        counts = np.bincount(np.asarray(labels, dtype=int), minlength=num_classes)
        weights = class_weights_from_counts(counts.tolist(), mode=weights).tolist()
    out["class_weights"] = None if weights == "none" else weights
    return out


@dataclass
class FitResult:
    model: SEMClassifier
    checkpoint: Path
    seconds: float
    epochs: int
    is_global_zero: bool
    curve: list[dict[str, float]]  # per epoch: its train and validation scores


# Prefixes of the epoch-level scores a training curve keeps (the val loaders' names included).
CURVE_PREFIXES = ("train/", "val/", "heldout/")


class EpochCurve(Callback):
    """Records every epoch's logged train and validation scores (for `dvc plots`)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Runs after the epoch's validation, so both sides are in callback_metrics.
        scores = {k: round(float(v), 4) for k, v in sorted(trainer.callback_metrics.items())
                  if k.startswith(CURVE_PREFIXES)}
        self.rows.append({"epoch": trainer.current_epoch, **scores})


def fit(
    model: SEMClassifier,
    datamodule: SEMDataModule,
    *,
    trainer_cfg: Mapping,
    max_epochs: int,
    patience: int,
    out_file: Path,
    logger=None,
    progress: bool = True,
    keep: str = "best",
) -> FitResult:
    """Train with early stopping on val macro-F1 and write the weights to `out_file`: the
    epoch with the best val macro-F1 (keep="best") or the last epoch (keep="last", for val
    images that are not of the domain the model is for).

    Checkpoints go to a scratch folder that is wiped first, so a checkpoint left by a killed
    run is never trusted; `out_file` appears (atomically) only when training completed.
    """
    scratch = out_file.parent / f".{out_file.stem}.work"
    shutil.rmtree(scratch, ignore_errors=True)
    if keep not in KEEP:
        raise ValueError(f"keep={keep!r}; use one of {KEEP}")
    # Without a monitor, the checkpoint is rewritten every epoch: the last one is kept.
    kept = ModelCheckpoint(dirpath=scratch, filename="kept", mode="max", save_top_k=1,
                           monitor=MONITOR if keep == "best" else None, save_last=False,
                           enable_version_counter=False)
    curve = EpochCurve()
    trainer = L.Trainer(
        accelerator=trainer_cfg["accelerator"],
        devices=trainer_cfg["devices"],
        num_nodes=trainer_cfg["num_nodes"],
        strategy=trainer_cfg["strategy"],
        precision=trainer_cfg["precision"],
        deterministic=trainer_cfg["deterministic"],
        max_epochs=max_epochs,
        callbacks=[kept, EarlyStopping(monitor=MONITOR, mode="max", patience=patience), curve],
        logger=logger if logger is not None else False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(scratch),
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    seconds = time.perf_counter() - start
    if trainer.is_global_zero:
        _write_weights_only(Path(kept.best_model_path), out_file)
        shutil.rmtree(scratch, ignore_errors=True)
    delivered = SEMClassifier.load_from_checkpoint(out_file, map_location="cpu", weights_only=True) \
        if trainer.is_global_zero else model
    return FitResult(delivered, out_file, seconds, trainer.current_epoch, trainer.is_global_zero,
                     curve.rows)


def _write_weights_only(checkpoint: Path, out_file: Path) -> None:
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    for key in _RESUME_ONLY:
        ckpt.pop(key, None)
    _save_checkpoint(ckpt, out_file)


def replace_weights(model: SEMClassifier, checkpoint: Path) -> None:
    """Write `model`'s current weights into its delivered checkpoint (hyper-parameters kept)."""
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    ckpt["state_dict"] = model.state_dict()
    _save_checkpoint(ckpt, checkpoint)


def _save_checkpoint(ckpt: dict, out_file: Path) -> None:
    # Through a buffer: torch.save names the archive's records after the file it writes, and
    # the atomic temporary name is random, so same weights would give different bytes.
    buffer = io.BytesIO()
    torch.save(ckpt, buffer)
    write_bytes(out_file, buffer.getvalue())


def image_batches(items: Items, pp: Preprocess, batch_size: int = 64) -> Iterator[Tensor]:
    """Model-input batches for items: the model's own preprocessing, no augmentation."""
    loader = DataLoader(ImageDataset(items, pp.image_size), batch_size=batch_size)
    return (x for x, _ in loader)


@torch.no_grad()
def predict_logits(model: SEMClassifier, items: Items, batch_size: int = 64) -> np.ndarray:
    """Logits for items, with the model's own preprocessing, no augmentation."""
    model.eval()
    out = [model(x).numpy() for x in image_batches(items, model.pp, batch_size)]
    return np.concatenate(out) if out else np.zeros((0, model.hparams.num_classes), np.float32)


def predict_probs(model: SEMClassifier, items: Items, batch_size: int = 64) -> np.ndarray:
    """Softmax probabilities for items (see predict_logits)."""
    return torch.softmax(torch.from_numpy(predict_logits(model, items, batch_size)), 1).numpy()


def evaluate_sets(model: SEMClassifier, sets: Mapping[str, Items],
                  clean_classes: Sequence[str] = ()) -> dict[str, dict]:
    """classification_metrics for each named set of items."""
    names = list(model.hparams.class_names)
    results = {}
    for name, items in sets.items():
        if not items:
            continue
        probs = predict_probs(model, items)
        y_true = [label for _, label in items]
        results[name] = classification_metrics(y_true, probs.argmax(1), names, probs,
                                                clean_classes=clean_classes)
    return results
