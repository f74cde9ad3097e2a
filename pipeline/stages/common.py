"""Glue shared by the training stages: reading splits, training, writing and logging reports."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import lightning as L
import torch

from pipeline import layout
from pipeline.data.datamodule import SEMDataModule
from pipeline.data.importer import load_unlabelled
from pipeline.data.split import phase_items
from pipeline.data.style import StyleTransfer, style_from_config
from pipeline.errors import UserError
from pipeline.evaluate.metrics import headline, scalar_metrics
from pipeline.evaluate.plots import confusion_figure, save_figure
from pipeline.files import atomic_dir, hash_list, read_csv, sha256_file, write_json
from pipeline.models.backbones import count_macs, count_params
from pipeline.models.classifier import SEMClassifier, checkpoint_preprocess, load_teacher
from pipeline.models.preprocess import Preprocess
from pipeline.taxonomy import Taxonomy, clean_classes
from pipeline.tracking import StageRun
from pipeline.training import FitResult, evaluate_sets, fit, loss_config, predict_logits

log = logging.getLogger(__name__)
SPLIT_NAMES = ("train", "val", "test", "heldout")


def load_splits(root: Path) -> dict[str, list[dict]]:
    splits = {}
    for name in SPLIT_NAMES:
        path = root / layout.SPLITS / f"{name}.csv"
        if not path.is_file():
            raise UserError(f"{path} is missing; run the split stage first (dvc repro split)")
        splits[name] = read_csv(path)
    return splits


def log_synthetic_inputs(tracker: StageRun, root: Path) -> None:
    """The synthetic splits a training stage reads, as MLflow datasets (digest: the sha256 of
    the split file, which lists every image's sha256)."""
    for name, context in (("train", "training"), ("val", "validation")):
        path = root / layout.SPLITS / f"{name}.csv"
        tracker.log_dataset(f"synthetic-{name}", sha256_file(path), path.relative_to(root),
                            context)


def log_images(tracker: StageRun, name: str, items, source: str, context: str) -> None:
    """A list of image files as an MLflow dataset, digest over their sha256s."""
    tracker.log_dataset(name, hash_list([sha256_file(p) for p, _ in items]), source, context,
                        profile={"images": len(items)})


def log_checkpoint(tracker: StageRun, name: str, model: SEMClassifier, checkpoint: Path) -> str:
    """The trained checkpoint as an MLflow logged model with its signature and label map."""
    size = model.pp.image_size
    classes = list(model.hparams.class_names)
    return tracker.log_model(name, [checkpoint], signature={
        "inputs": [{"name": "image", "dtype": "float32", "shape": [-1, 1, size, size],
                    "range": [0.0, 1.0], "preprocess": model.pp.to_dict()}],
        "outputs": [{"name": "logits", "dtype": "float32", "shape": [-1, len(classes)]}]},
        label_map=dict(enumerate(classes)),
        tags={"backbone": model.hparams.backbone, "checkpoint_sha256": sha256_file(checkpoint)})


def write_headline(folder: Path, scores: Mapping[str, dict],
                   extra: Mapping[str, Mapping[str, float]] | None = None) -> None:
    """A DVC metrics folder: `<set>.json` holding `headline` scores for each scored set, and
    each `extra` row (timings, edge figures) as `<name>.json`; replaced as a whole."""
    with atomic_dir(folder) as tmp:
        for name, metrics in scores.items():
            write_json(tmp / f"{name}.json", headline(metrics))
        for name, row in (extra or {}).items():
            write_json(tmp / f"{name}.json", dict(row))


def write_training_metrics(root: Path, name: str, metrics_dir: Path,
                           evaluations: Mapping[str, dict], result: FitResult) -> None:
    """A trained model's DVC metrics (headline per scored set), curve and wall time."""
    write_headline(metrics_dir, evaluations)
    write_json(root / layout.training_curve(name), result.curve)
    write_json(root / layout.training_time(name), {"train_seconds": round(result.seconds, 1)})


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (and dataloader workers) for a reproducible stage."""
    L.seed_everything(seed, workers=True, verbose=False)


def model_facts(model: SEMClassifier, checkpoint: Path) -> dict:
    size = model.pp.image_size
    return {
        "params": count_params(model.net),
        "macs": count_macs(model.net, (1, 1, size, size)),
        "image_size": size,
        "torch_threads": torch.get_num_threads(),
        "checkpoint_sha256": sha256_file(checkpoint),
    }


def report_model(
    tracker: StageRun,
    out_dir: Path,
    evaluations: Mapping[str, dict],
    class_names: list[str],
    facts: Mapping[str, float | int | str],
    timing: Mapping[str, float],
) -> dict:
    """Write metrics.json and confusion figures beside the model and log them to the run.

    `timing` goes to MLflow only, not into the output folder: the folder must be the same
    bytes for the same params, or DVC would see a changed model on every rerun."""
    summary: dict = {"facts": dict(facts)}
    flat: dict[str, float] = {}
    for name, metrics in evaluations.items():
        summary[name] = metrics
        flat.update(scalar_metrics(metrics, f"final/{name}"))
        for normalise in (False, True):
            kind = "normalised" if normalise else "counts"
            fig = confusion_figure(metrics["confusion"], class_names,
                                   f"{name} ({kind}, n={metrics['n']})", normalise=normalise)
            path = save_figure(fig, out_dir / f"confusion_{name}_{kind}.png")
            tracker.log_artifact(path, "figures")
    write_json(out_dir / "metrics.json", summary)
    numeric = {k: float(v) for k, v in {**facts, **timing}.items() if isinstance(v, int | float)}
    tracker.log_metrics({**flat, **numeric})
    tracker.set_tags({"checkpoint_sha256": facts["checkpoint_sha256"]})
    tracker.log_artifact(out_dir / "metrics.json", "reports")
    return flat


def unlabeled_images(cfg: dict, phase: str) -> list[str]:
    """The phase's unlabelled real image paths (data.real.<phase>.unlabeled), or none."""
    folder = cfg["data"]["real"][phase]["unlabeled"]
    return load_unlabelled(Path(folder).expanduser())[0] if folder else []


def synthetic_style(cfg: dict, phase: str, image_size: int, seed: int) -> StyleTransfer | None:
    """train.style toward the phase's unlabelled real images, or None (off, or no folder)."""
    if not cfg["train"]["style"]["enabled"]:
        return None
    return style_from_config(cfg["train"]["style"], unlabeled_images(cfg, phase), image_size,
                             seed)


def train_model(cfg: dict, root: Path, *, stage: str, model_cfg: dict, opt_cfg: dict,
                out_dir: Path, metrics_dir: Path, teacher_ckpt: Path | None,
                kd: dict | None, freeze_blocks: int = 0) -> None:
    """Train one model on the synthetic splits; shared by train_teacher and distill_student.

    With kd.teacher_logits == "cached", the teacher's logits are computed once per
    (unaugmented) train image and served with the batches instead of running the teacher on
    every augmented batch."""
    train = cfg["train"]
    taxonomy = Taxonomy.from_config(cfg["taxonomy"])
    phase = train["phase"]
    classes = list(taxonomy.phase(phase).classes)
    splits = {k: phase_items(v, root, taxonomy, phase) for k, v in load_splits(root).items()}
    with StageRun(root, cfg, stage, phase=phase) as tracker:
        tracker.log_params({"model": model_cfg, "optim": opt_cfg, "train": train,
                            "trainer": cfg["trainer"], "kd": kd or {}})
        log_synthetic_inputs(tracker, root)
        seed_everything(opt_cfg["seed"])
        cached = None
        if teacher_ckpt and kd and kd.get("teacher_logits") == "cached":
            cached = predict_logits(load_teacher(teacher_ckpt, classes), splits["train"])
        model = SEMClassifier(
            model_cfg["name"], len(classes), classes,
            Preprocess(model_cfg["image_size"]).to_dict(),
            pretrained=model_cfg["pretrained"], drop_rate=model_cfg["drop_rate"],
            head_features=model_cfg["head_features"],
            loss=loss_config(train["loss"], [y for _, y in splits["train"]], len(classes)),
            optimizer={k: opt_cfg[k] for k in ("lr", "weight_decay", "warmup_epochs")},
            max_epochs=opt_cfg["max_epochs"],
            teacher_ckpt=str(teacher_ckpt) if teacher_ckpt else None, kd=kd,
        )
        if freeze_blocks:
            model.freeze_first_units(freeze_blocks)
        size = model_cfg["image_size"]
        if teacher_ckpt and cached is None:
            # One batch feeds both models: serve the larger size, each resizes on-tensor.
            size = max(size, checkpoint_preprocess(teacher_ckpt).image_size)
        style = synthetic_style(cfg, phase, size, opt_cfg["seed"])
        if style is not None:
            tracker.log_params({"style_references": len(style.references)})
        datamodule = SEMDataModule(
            splits["train"], {"val": splits["val"], "heldout": splits["heldout"]}, size,
            augment=train["augment"], batch_size=opt_cfg["batch_size"],
            num_workers=train["num_workers"], seed=opt_cfg["seed"], sampler=train["sampler"],
            teacher_logits=cached, style=style,
        )
        result = fit(model, datamodule, trainer_cfg=cfg["trainer"],
                     max_epochs=opt_cfg["max_epochs"], patience=opt_cfg["early_stopping_patience"],
                     out_file=out_dir / "model.ckpt", logger=tracker.lightning_logger())
        if not result.is_global_zero:
            return  # DDP: only rank 0 evaluates, writes and logs
        evaluations = evaluate_sets(result.model, {k: splits[k] for k in ("val", "test", "heldout")},
                                    clean_classes=clean_classes(classes))
        facts = {**model_facts(result.model, result.checkpoint), "epochs": result.epochs,
                 "backbone": model_cfg["name"]}
        timing = {"train_seconds": round(result.seconds, 1)}
        flat = report_model(tracker, out_dir, evaluations, classes, facts, timing)
        log_checkpoint(tracker, stage, result.model, result.checkpoint)
        write_training_metrics(root, out_dir.name, metrics_dir, evaluations, result)
        log.info("%s: %s", stage, {k: round(v, 4) for k, v in flat.items() if "accuracy" in k
                                   or "macro_f1" in k})
