"""finetune_real@<phase>: the phase's delivered model, trained on its real images (or the
held-out-profile stand-in) by pipeline.recipes.train_phase_model: with real labelled images,
real-fine-tuned teachers taught to the student by function matching; otherwise the
synthetic-distilled student fine-tuned with a replay share of synthetic images."""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline import layout
from pipeline.data.importer import load_unlabelled
from pipeline.data.real import STANDIN, image_records, labelled_split, standin_items
from pipeline.data.split import phase_items
from pipeline.errors import UserError
from pipeline.evaluate.submission import submission_rows, write_submission
from pipeline.files import write_json
from pipeline.models.surgery import head_row_sources
from pipeline.recipes import PhaseData, RecipeOptions, train_phase_model
from pipeline.stages.common import (
    load_splits,
    log_checkpoint,
    log_images,
    log_synthetic_inputs,
    model_facts,
    report_model,
    seed_everything,
    unlabeled_images,
    write_training_metrics,
)
from pipeline.taxonomy import Taxonomy
from pipeline.tracking import StageRun
from pipeline.training import evaluate_sets, predict_probs

log = logging.getLogger(__name__)
CACHE = Path(".cache")  # teacher outputs on distillation views (pipeline.matching)


def run(cfg: dict, root: Path, phase: str) -> None:
    phase_cfg = _trained_phase(cfg, phase)
    taxonomy = Taxonomy.from_config(cfg["taxonomy"])
    tax_phase = phase_cfg["taxonomy"]
    classes = list(taxonomy.phase(tax_phase).classes)
    splits = load_splits(root)
    data, report = _phase_data(cfg, root, phase, taxonomy, splits)
    opts = RecipeOptions.from_config(cfg, root, head_row_sources(taxonomy, cfg["train"]["phase"],
                                                                 tax_phase), phase)
    target = root / layout.phase_model(phase)
    with StageRun(root, cfg, "finetune_real", phase=phase) as tracker:
        tracker.log_params({"finetune": cfg["finetune"], "phase": phase_cfg,
                            "real": cfg["data"]["real"][phase]})
        tracker.set_tags({"data_source": report["source"]})
        seed_everything(cfg["finetune"]["seed"])
        _log_inputs(tracker, root, data, report)
        trained = train_phase_model(data, classes, opts, target, cache_dir=root / CACHE,
                                    logger=tracker.lightning_logger())
        evaluations = _evaluate(trained.result.model, data, splits, root, taxonomy, tax_phase)
        facts = {**model_facts(trained.result.model, trained.result.checkpoint), **trained.facts,
                 "real_train_images": len(data.train), "real_val_images": len(data.val),
                 "data_is_real": int(data.is_real)}
        timing = {"train_seconds": round(trained.result.seconds, 1)}
        flat = report_model(tracker, target, evaluations, classes, facts, timing)
        log_checkpoint(tracker, f"finetune_real-{phase}", trained.result.model,
                       trained.result.checkpoint)
        records = {"train_files": image_records(data.train, classes),
                   "val_files": image_records(data.val, classes)} if data.is_real else {}
        write_json(target / layout.REAL_DATA, {**report, **trained.record, **records})
        tracker.log_artifact(target / layout.REAL_DATA, "reports")
        if cfg["data"]["real"][phase]["unlabeled"]:
            tracker.log_artifact(_predict_unlabeled(trained.result.model, cfg, phase, target),
                                 "predictions")
        write_training_metrics(root, phase, root / layout.phase_model_metrics(phase),
                               evaluations, trained.result)
        log.info("finetune_real@%s (%s): %s", phase, report["source"],
                 {k: round(v, 4) for k, v in flat.items() if k.endswith(("accuracy", "macro_f1"))})


def _evaluate(model, data, splits, root, taxonomy, tax_phase) -> dict:
    """The delivered model on its val split, the synthetic test and (stand-in) the held-out
    profiles' test share."""
    sets = {"val": data.val, "synthetic_test": phase_items(splits["test"], root, taxonomy,
                                                           tax_phase)}
    if not data.is_real:
        sets["standin_test"] = standin_items(splits["heldout"], "test", root, taxonomy, tax_phase)
    return evaluate_sets(model, sets, clean_classes=taxonomy.phase(tax_phase).clean_classes)


def _log_inputs(tracker, root, data, report) -> None:
    """The images the phase trains on, as MLflow datasets."""
    log_synthetic_inputs(tracker, root)
    source = report.get("folder", "held-out synthetic profiles (stand-in)")
    log_images(tracker, "real-train" if data.is_real else "standin-train", data.train, source,
               "training")
    log_images(tracker, "real-val" if data.is_real else "standin-val", data.val, source,
               "validation")
    if data.unlabeled:
        log_images(tracker, "real-unlabeled", [(p, -1) for p in data.unlabeled],
                   str(Path(data.unlabeled[0]).parent), "training")


def _trained_phase(cfg: dict, phase: str) -> dict:
    if phase not in cfg["phases"]:
        raise UserError(f"unknown phase {phase!r}; phases in params.yaml: {sorted(cfg['phases'])}")
    if not cfg["phases"][phase]["trains"]:
        raise UserError(
            f"{phase} never trains (phases.{phase}.trains=false): the hackathon rule judges "
            f"the {cfg['evaluate']['phases'].get(phase)} model unchanged; evaluate it instead")
    return cfg["phases"][phase]


def _phase_data(cfg, root, phase, taxonomy, splits) -> tuple[PhaseData, dict]:
    """The phase's images: its real folders when configured, else the stand-in."""
    ft, real = cfg["finetune"], cfg["data"]["real"][phase]
    tax_phase = cfg["phases"][phase]["taxonomy"]
    classes = taxonomy.phase(tax_phase).classes
    synthetic = {k: phase_items(splits[k], root, taxonomy, tax_phase) for k in ("train", "val")}
    unlabeled = unlabeled_images(cfg, phase)
    if real["train"]:
        train, val, report = labelled_split(
            real["train"], classes, taxonomy, min_size=cfg["data"]["real"]["min_size"],
            val_fraction=ft["val_fraction"], seed=ft["seed"],
            max_distance=ft["near_dup_max_distance"])
        log.info("real training folder %s: %d train, %d val images", real["train"],
                 len(train), len(val))
    else:
        train, val = (standin_items(splits["heldout"], role, root, taxonomy, tax_phase)
                      for role in ("train", "val"))
        report = {"source": STANDIN}
    return PhaseData(train, val, report["source"] == "real", unlabeled, synthetic["train"],
                     synthetic["val"]), report


def _predict_unlabeled(model, cfg: dict, phase: str, target: Path) -> Path:
    """The organisers' submission format for the unlabelled folder."""
    folder = Path(cfg["data"]["real"][phase]["unlabeled"]).expanduser()
    paths, skipped = load_unlabelled(folder)
    for path, reason in skipped:
        log.warning("unlabelled image skipped: %s (%s)", path, reason)
    names = list(model.hparams.class_names)
    predicted = [names[int(i)] for i in predict_probs(model, [(p, 0) for p in paths]).argmax(1)]
    return write_submission(target / "predictions_unlabeled.csv",
                            submission_rows(folder, paths, predicted))
