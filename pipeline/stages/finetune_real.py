"""finetune_real@<phase>: the distilled student fine-tuned on the phase's real images (or the
held-out-profile stand-in), with head surgery, frozen early blocks, class weights from the real
counts and a replay buffer of the hardest synthetic images mixed into every batch. With
finetune.teacher_kd, the teacher is fine-tuned on the same images first and the student learns
from it by distillation."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.data.datamodule import SEMDataModule
from pipeline.data.importer import load_unlabelled
from pipeline.data.real import (
    STANDIN,
    load_real_folder,
    require_trainable,
    split_real,
    standin_items,
)
from pipeline.errors import UserError
from pipeline.files import sha256_file, write_csv, write_json
from pipeline.models.classifier import SEMClassifier, checkpoint_preprocess
from pipeline.models.equalize import equalizable, equalize_activation_ranges
from pipeline.models.int8_grid import snap_weights_to_int8_grid
from pipeline.models.surgery import head_row_sources, transfer_weights
from pipeline.stages.common import load_splits, model_facts, report_model, seed_everything
from pipeline.stages.distill_student import OUT_DIR as STUDENT_DIR
from pipeline.stages.train_teacher import OUT_DIR as TEACHER_DIR
from pipeline.taxonomy import Taxonomy
from pipeline.tracking import StageRun
from pipeline.training import (
    Items,
    evaluate_sets,
    fit,
    image_batches,
    loss_config,
    phase_items,
    predict_probs,
    replace_weights,
)

log = logging.getLogger(__name__)
# The real-fine-tuned teacher (finetune.teacher_kd), kept beside the student it taught.
TEACHER_CKPT = "teacher.ckpt"


def out_dir(phase: str) -> Path:
    return Path("models") / phase


def metrics_file(phase: str) -> Path:
    return Path("reports/models") / f"{phase}.json"


def run(cfg: dict, root: Path, phase: str) -> None:
    if phase not in cfg["phases"]:
        raise UserError(f"unknown phase {phase!r}; phases in params.yaml: {sorted(cfg['phases'])}")
    phase_cfg, ft = cfg["phases"][phase], cfg["finetune"]
    if not phase_cfg["trains"]:
        raise UserError(
            f"{phase} never trains (phases.{phase}.trains=false): the hackathon rule judges "
            f"the {cfg['evaluate']['phases'].get(phase)} model unchanged; evaluate it instead"
        )
    if ft["init"] not in ("student", "scratch"):
        raise UserError(f"finetune.init={ft['init']!r} is unknown; use student or scratch")
    taxonomy = Taxonomy.from_config(cfg["taxonomy"])
    tax_phase = phase_cfg["taxonomy"]
    classes = list(taxonomy.phase(tax_phase).classes)
    splits = load_splits(root)
    target = root / out_dir(phase)

    with StageRun(root, cfg, "finetune_real", phase=phase) as tracker:
        tracker.log_params({"finetune": ft, "phase": phase_cfg, "real": cfg["data"]["real"][phase]})
        seed_everything(ft["seed"])
        train, val, data_report = _real_train_val(cfg, root, phase, taxonomy, classes, splits)
        tracker.set_tags({"data_source": data_report["source"]})
        labels = [y for _, y in train]
        synthetic_train = phase_items(splits["train"], root, taxonomy, tax_phase)
        synthetic_val = phase_items(splits["val"], root, taxonomy, tax_phase)
        teacher_ckpt, teacher_facts = None, {}
        (target / TEACHER_CKPT).unlink(missing_ok=True)  # never a stale teacher from a past run
        if ft["teacher_kd"]["enabled"]:
            # The pretrained teacher adapts to the real images first, then teaches the student.
            teacher, _ = _initial_model(cfg, root, classes, taxonomy, tax_phase, labels,
                                        start="teacher")
            teacher_ckpt = target / TEACHER_CKPT
            taught = _fit(cfg, teacher, train, val,
                          _hardest(teacher, synthetic_train, ft["replay"]["size"]), teacher_ckpt,
                          synthetic_val=synthetic_val, logger=None)
            scores = evaluate_sets(taught.model, {"val": val})["val"]
            teacher_facts = {"teacher_val_accuracy": scores["accuracy"],
                             "teacher_val_macro_f1": scores["macro_f1"]}
        model, transfer = _initial_model(cfg, root, classes, taxonomy, tax_phase, labels,
                                         start=ft["init"], teacher_ckpt=teacher_ckpt)
        replay = _hardest(model, synthetic_train, ft["replay"]["size"]) \
            if ft["init"] == "student" else []
        data_report.update(transfer=transfer, replay_size=len(replay))

        result = _fit(cfg, model, train, val, replay, target / "model.ckpt",
                      synthetic_val=synthetic_val, logger=tracker.lightning_logger())
        unlabeled = cfg["data"]["real"][phase]["unlabeled"]
        if ft["self_training"]["enabled"] and unlabeled:
            pseudo = _pseudo_labels(result.model, unlabeled, ft["self_training"]["threshold"])
            data_report["pseudo_labels"] = len(pseudo)
            model, _ = _initial_model(cfg, root, classes, taxonomy, tax_phase, labels,
                                      start=ft["init"], teacher_ckpt=teacher_ckpt)
            result = _fit(cfg, model, train + pseudo, val, replay, target / "model.ckpt",
                          synthetic_val=synthetic_val, logger=tracker.lightning_logger())
        grid_facts = _prepare_for_int8(ft, result, val, train + synthetic_train)

        sets = {"val": val, "synthetic_test": phase_items(splits["test"], root, taxonomy, tax_phase)}
        if data_report["source"] == STANDIN:
            sets["standin_test"] = standin_items(splits["heldout"], "test", root, taxonomy, tax_phase)
        evaluations = evaluate_sets(result.model, sets,
                                    clean_classes=[c for c in classes if "clean" in c.lower()])
        facts = {**model_facts(result.model, result.checkpoint), **teacher_facts, **grid_facts,
                 "epochs": result.epochs,
                 "real_train_images": len(train), "real_val_images": len(val),
                 "data_is_real": int(data_report["source"] == "real")}
        timing = {"train_seconds": round(result.seconds, 1)}
        flat = report_model(tracker, target, evaluations, classes, facts, timing)
        write_json(target / "real_data.json", data_report)
        tracker.log_artifact(target / "real_data.json", "reports")
        if unlabeled:
            path = _predict_unlabeled(result.model, unlabeled, target)
            tracker.log_artifact(path, "predictions")
        write_json(root / metrics_file(phase), {
            **flat, **timing, **{k: v for k, v in facts.items() if k != "checkpoint_sha256"}})
        log.info("finetune_real@%s (%s): %s", phase, data_report["source"],
                 {k: round(v, 4) for k, v in flat.items() if k.endswith(("accuracy", "macro_f1"))})


def _real_train_val(cfg, root, phase, taxonomy, classes, splits) -> tuple[Items, Items, dict]:
    ft, real = cfg["finetune"], cfg["data"]["real"][phase]
    if not real["train"]:
        tax_phase = cfg["phases"][phase]["taxonomy"]
        train = standin_items(splits["heldout"], "train", root, taxonomy, tax_phase)
        val = standin_items(splits["heldout"], "val", root, taxonomy, tax_phase)
        return train, val, {"source": STANDIN, "train": len(train), "val": len(val)}
    folder = str(Path(real["train"]).expanduser())
    items, import_report = load_real_folder(folder, classes, taxonomy,
                                            cfg["data"]["real"]["min_size"])
    index = {c: i for i, c in enumerate(classes)}
    require_trainable([(p, index[c]) for p, c in items], classes, folder)
    log.info("real training folder %s: %d images, skipped %d", folder, len(items),
             len(import_report["skipped"]))
    train, val, split_report = split_real(items, classes, val_fraction=ft["val_fraction"],
                                          seed=ft["seed"], max_distance=ft["near_dup_max_distance"])
    if not val:
        raise UserError(f"{folder}: too few images for a validation split; add images or "
                        "raise finetune.val_fraction")
    report = {"source": "real", "folder": folder, "import": import_report, "split": split_report,
              "train_files": [[p, classes[y], sha256_file(p)] for p, y in train],
              "val_files": [[p, classes[y], sha256_file(p)] for p, y in val]}
    return train, val, report


def _initial_model(cfg, root, classes, taxonomy, tax_phase, labels, *, start: str,
                   teacher_ckpt: Path | None = None) -> tuple[SEMClassifier, dict]:
    """The model to fine-tune: from scratch (start="scratch") or from the synthetic-trained
    "student" or "teacher" checkpoint with head surgery and frozen first blocks. With
    `teacher_ckpt`, it is trained by distillation from that (real-fine-tuned) teacher."""
    ft = cfg["finetune"]
    loss = loss_config({**cfg["train"]["loss"], "class_weights": ft["class_weights"]}, labels,
                       len(classes))
    common = {"loss": loss, "optimizer": {k: ft[k] for k in ("lr", "weight_decay", "warmup_epochs")},
              "max_epochs": ft["max_epochs"]}
    if teacher_ckpt is not None:
        kd = ft["teacher_kd"]
        common.update(teacher_ckpt=str(teacher_ckpt),
                      kd={"temperature": kd["temperature"], "alpha": kd["alpha"]})
    if start == "scratch":
        m = cfg["model"]["student"]
        from pipeline.models.preprocess import Preprocess

        model = SEMClassifier(m["name"], len(classes), classes,
                              Preprocess(m["image_size"]).to_dict(), drop_rate=m["drop_rate"],
                              head_features=m["head_features"], **common)
        return model, {"init": "scratch"}
    ckpt = root / {"student": STUDENT_DIR, "teacher": TEACHER_DIR}[start] / "model.ckpt"
    if not ckpt.is_file():
        raise UserError(f"{ckpt} is missing; run the {start} stage first (dvc repro)")
    source = SEMClassifier.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    hp = source.hparams
    model = SEMClassifier(hp.backbone, len(classes), classes, dict(hp.preprocess),
                          drop_rate=hp.drop_rate, head_features=hp.get("head_features"), **common)
    transfer = transfer_weights(source.net, model.net,
                                head_row_sources(taxonomy, cfg["train"]["phase"], tax_phase))
    model.freeze_first_units(ft["freeze_blocks"])
    return model, {"init": start, f"{start}_sha256": sha256_file(ckpt), **transfer}


@torch.no_grad()
def _hardest(model: SEMClassifier, items: Items, size: int) -> Items:
    """The `size` synthetic items with the highest loss under the starting model."""
    if size <= 0 or not items:
        return []
    probs = predict_probs(model, items)
    labels = torch.tensor([y for _, y in items])
    losses = F.nll_loss(torch.log(torch.from_numpy(probs).clamp_min(1e-12)), labels,
                        reduction="none").numpy()
    keep = np.argsort(-losses, kind="stable")[:size]
    return [items[i] for i in sorted(keep.tolist())]


def _fit(cfg, model, train, val, replay, out_file, *, synthetic_val, logger):
    ft = cfg["finetune"]
    size = model.pp.image_size
    if model.hparams.teacher_ckpt:  # one batch feeds both models; each resizes on-tensor
        size = max(size, checkpoint_preprocess(model.hparams.teacher_ckpt).image_size)
    datamodule = SEMDataModule(
        train, {"val": val, "synthetic_val": synthetic_val}, size,
        augment=cfg["train"]["augment"], batch_size=ft["batch_size"],
        num_workers=cfg["train"]["num_workers"], seed=ft["seed"], sampler="shuffle",
        replay=replay, replay_fraction=ft["replay"]["fraction"],
    )
    return fit(model, datamodule, trainer_cfg=cfg["trainer"], max_epochs=ft["max_epochs"],
               patience=ft["early_stopping_patience"], out_file=out_file, logger=logger)


def _prepare_for_int8(ft: dict, result, val: Items, calibration: Items) -> dict:
    """Equalize activation ranges (plain CNNs) and round weights to the int8 grid, in the
    model and its checkpoint, as `ft` asks. Returns the share of val predictions that kept
    their class (equalizing is exact; rounding is the cost) and the equalized blocks'
    median channel range before equalizing, as a share of the block's maximum."""
    net, facts = result.model.eval().net, {}
    equalize = bool(ft["int8_equalize_images"]) and equalizable(net)
    if not equalize and not ft["int8_weight_grid"]:
        return {}
    before = predict_probs(result.model, val).argmax(1)
    if equalize:
        rng = np.random.default_rng(ft["seed"])
        pick = rng.choice(len(calibration), min(ft["int8_equalize_images"], len(calibration)),
                          replace=False)
        images = [calibration[i] for i in sorted(pick.tolist())]
        shares = equalize_activation_ranges(net, image_batches(images, result.model.pp))
        facts.update({f"equalize_block{i}_median_channel_share": v for i, v in enumerate(shares)})
    if ft["int8_weight_grid"]:
        snap_weights_to_int8_grid(net)
    replace_weights(result.model, result.checkpoint)
    after = predict_probs(result.model, val).argmax(1)
    return {"int8_grid_val_top1_agreement": float((before == after).mean()), **facts}


def _pseudo_labels(model: SEMClassifier, folder: str, threshold: float) -> Items:
    paths, _ = load_unlabelled(Path(folder))
    probs = predict_probs(model, [(p, 0) for p in paths])
    keep = probs.max(1) >= threshold
    return [(p, int(y)) for p, y, k in zip(paths, probs.argmax(1), keep, strict=True) if k]


def _predict_unlabeled(model: SEMClassifier, folder: str, target: Path) -> Path:
    """The organisers' submission format: image_name,predicted_class."""
    paths, skipped = load_unlabelled(Path(folder))
    for path, reason in skipped:
        log.warning("unlabelled image skipped: %s (%s)", path, reason)
    probs = predict_probs(model, [(p, 0) for p in paths])
    names = list(model.hparams.class_names)
    rows = [{"image_name": Path(p).name, "predicted_class": names[int(i)]}
            for p, i in zip(paths, probs.argmax(1), strict=True)]
    out = target / "predictions_unlabeled.csv"
    write_csv(out, rows, ["image_name", "predicted_class"])
    return out
