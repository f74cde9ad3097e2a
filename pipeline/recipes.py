"""How a phase's delivered model is trained: one call, `train_phase_model`, used by the
finetune_real stage and by bench/bench_real.py (which varies the options, never the code).

Two recipes:
- "matching" (default when the phase has real labelled images): each teacher (the
  ImageNet → synthetic teacher of train_teacher, and/or ImageNet backbones) is fine-tuned on
  the real train images; the student learns their ensemble by function matching
  (pipeline.matching) on the real train images, the phase's unlabelled real images and
  synthetic images. With `label_free` and no labelled real images, the student matches the
  synthetic teacher (nothing labelled to fine-tune it on; with `source_free`, adapted to the
  unlabelled images by pipeline.source_free) on the unlabelled real images, the stand-in
  and synthetic images.
- "finetune" (the stand-in, or when asked): the synthetic-distilled student fine-tuned on the images with a replay share of the hardest synthetic images,
  optionally from a real-fine-tuned teacher by KD (teacher_kd) and with pseudo-labels on
  the unlabelled images (self_training).
`finetune.init` picks the start of the matching student on labelled real images only
(scratch or the distilled student); every other phase model starts from the distilled one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from pipeline.data.importer import load_unlabelled
from pipeline.data.style import style_from_config
from pipeline.errors import UserError
from pipeline.files import write_bytes
from pipeline.finetune import (
    FitOptions,
    ModelSpec,
    adapt,
    hardest,
    prepare_for_int8,
    reestimate_batchnorm,
    start_model,
)
from pipeline.matching import MatchOptions, Teacher, match, teacher_id, transfer_set
from pipeline.models.classifier import load_classifier
from pipeline.preflight import SYNTHETIC_TEACHER
from pipeline.source_free import SourceFreeOptions, adapt_source_free
from pipeline.training import FitResult, Items, evaluate_sets, predict_probs, replace_weights

RECIPES = ("matching", "finetune")
STUDENT_STARTS = ("student", "scratch")
NO_PSEUDO_LABEL = 1.0 + 1e-6  # above any softmax confidence


@dataclass(frozen=True)
class PhaseData:
    """The images a phase trains on: labelled train/val (real, or the stand-in), unlabelled
    real image paths, and the synthetic train/val split in the phase's taxonomy."""

    train: Items
    val: Items
    is_real: bool
    unlabeled: list[str] = field(default_factory=list)
    synthetic_train: Items = field(default_factory=list)
    synthetic_val: Items = field(default_factory=list)


@dataclass(frozen=True)
class RecipeOptions:
    recipe: str
    student_start: str  # matching on real labels: "student" (the distilled one) or "scratch"
    student: ModelSpec
    student_ckpt: Path | None  # models/student/model.ckpt
    teacher_ckpt: Path | None  # models/teacher/model.ckpt
    head_sources: list  # rows of the phase's classifier from the synthetic taxonomy's rows
    fit: FitOptions  # the student fine-tune ("finetune" recipe)
    teacher_fit: FitOptions
    teachers: tuple[str, ...] = (SYNTHETIC_TEACHER,)
    teacher_image_size: int = 128
    matching: MatchOptions = field(default_factory=MatchOptions)
    synthetic_images: int = 0
    use_unlabeled: bool = True
    label_free: bool = False  # matching on unlabelled real images when none is labelled
    replay_size: int = 0
    teacher_kd: Mapping = field(default_factory=lambda: {"enabled": False})
    self_training: Mapping = field(default_factory=lambda: {"enabled": False})
    bn_adapt: Mapping = field(default_factory=lambda: {"enabled": False})
    style: Mapping = field(default_factory=lambda: {"enabled": False})  # stand-in images only
    source_free: SourceFreeOptions | None = None  # label-free matching: adapt the teacher
    equalize_images: int = 0
    weight_grid: bool = True

    @classmethod
    def from_config(cls, cfg: Mapping, root: Path, head_sources: list,
                    phase: str | None = None) -> RecipeOptions:
        """`phase` resolves finetune.matching.label_free: auto (see label_free_for)."""
        ft = cfg["finetune"]
        for key, value, allowed in (("recipe", ft["recipe"], RECIPES),
                                    ("init", ft["init"], STUDENT_STARTS)):
            if value not in allowed:
                raise UserError(f"finetune.{key}={value!r} is unknown; use one of {allowed}")
        m = ft["matching"]
        return cls(
            recipe=ft["recipe"], student_start=ft["init"],
            student=ModelSpec.from_config(cfg["model"]["student"]),
            student_ckpt=root / "models/student/model.ckpt",
            teacher_ckpt=root / "models/teacher/model.ckpt", head_sources=head_sources,
            fit=FitOptions.from_config(cfg), teacher_fit=FitOptions.from_config(
                cfg, {**ft, **ft["teacher"]}),
            teachers=tuple(ft["teachers"]), teacher_image_size=ft["teacher"]["image_size"],
            matching=MatchOptions.from_config(m, cfg), synthetic_images=m["synthetic_images"],
            use_unlabeled=m["unlabeled"], label_free=label_free_for(cfg, phase),
            replay_size=ft["replay"]["size"],
            teacher_kd=dict(ft["teacher_kd"]), self_training=dict(ft["self_training"]),
            bn_adapt=dict(ft["bn_adapt"]), style=dict(cfg["train"]["style"]),
            source_free=SourceFreeOptions.from_config(
                ft["source_free"], ft["seed"], cfg["train"]["augment"])
            if ft["source_free"]["enabled"] else None,
            equalize_images=ft["int8_equalize_images"],
            weight_grid=ft["int8_weight_grid"])


def label_free_for(cfg: Mapping, phase: str | None) -> bool:
    """finetune.matching.label_free for `phase`; "auto" is on where label-free matching can
    run: the synthetic teacher alone, trained in the phase's classes (train.phase's)."""
    ft = cfg["finetune"]
    value = ft["matching"]["label_free"]
    if value != "auto":
        return bool(value)
    return phase is not None and list(ft["teachers"]) == [SYNTHETIC_TEACHER] and \
        cfg["phases"][phase]["taxonomy"] == cfg["train"]["phase"]


@dataclass
class TrainedPhase:
    result: FitResult  # the delivered student (its checkpoint is out_dir/model.ckpt)
    teachers: dict[str, Path]  # teacher name → its real-fine-tuned checkpoint
    record: dict  # where everything came from, for real_data.json and the metrics
    facts: dict  # scalar figures for the metrics file


def train_phase_model(data: PhaseData, classes: Sequence[str], opts: RecipeOptions,
                      out_dir: Path, *, cache_dir: Path | None = None,
                      trained_teachers: Mapping[str, Path] | None = None,
                      logger=None) -> TrainedPhase:
    """Train the phase's delivered model into out_dir/model.ckpt (and its teachers beside
    it), ready for export: activation ranges equalized and weights on the int8 grid.

    `trained_teachers`: teachers already fine-tuned on these same images (name →
    checkpoint, as `train_teacher` makes them), used instead of training them again."""
    out_dir = Path(out_dir)
    for old in out_dir.glob("teacher*.ckpt"):  # never a stale teacher from an earlier run
        old.unlink()
    if opts.recipe == "matching" and (data.is_real or _label_free(data, opts)):
        trained = _matching(data, classes, opts, out_dir, cache_dir, trained_teachers or {},
                            logger)
    else:
        trained = _finetune(data, classes, opts, out_dir, logger)
    if opts.bn_adapt["enabled"] and data.unlabeled:
        trained.facts["bn_adapt_layers"] = reestimate_batchnorm(
            trained.result.model, data.unlabeled, batch_size=opts.bn_adapt["batch_size"])
        trained.facts["bn_adapt_images"] = len(data.unlabeled)
        replace_weights(trained.result.model, trained.result.checkpoint)
    trained.facts.update(prepare_for_int8(
        trained.result, data.val, data.train + data.synthetic_train,
        equalize_images=opts.equalize_images, weight_grid=opts.weight_grid,
        seed=opts.fit.seed))
    return trained


def train_teacher(name: str, data: PhaseData, classes: Sequence[str], opts: RecipeOptions,
                  out_file: Path) -> FitResult:
    """One teacher fine-tuned on the phase's images: the synthetic-stage teacher (with a
    replay share of its hardest synthetic images) or ImageNet weights of backbone `name`."""
    labels = [y for _, y in data.train]
    if name == SYNTHETIC_TEACHER:
        _require(opts.teacher_ckpt, "train_teacher")
        model, _ = start_model(opts.teacher_ckpt, classes, labels, opts.teacher_fit,
                               head_sources=opts.head_sources,
                               image_size=opts.teacher_image_size)
        replay = hardest(model, data.synthetic_train, opts.replay_size)
    else:
        spec = ModelSpec(name, opts.teacher_image_size, pretrained=True, drop_rate=0.2)
        model, _ = start_model(spec, classes, labels, opts.teacher_fit)
        replay = []
    return adapt(model, data.train, data.val, out_file, opts.teacher_fit, replay=replay,
                 extra_val={"synthetic_val": data.synthetic_val})


def _matching(data, classes, opts, out_dir, cache_dir, trained, logger) -> TrainedPhase:
    if not opts.teachers:
        raise UserError("finetune.teachers is empty; name at least one teacher "
                        f"({SYNTHETIC_TEACHER!r} or an ImageNet backbone such as "
                        "efficientnet_lite0)")
    teachers, facts = {}, {}
    for name in opts.teachers:
        if not data.is_real:
            teachers[name], model = _label_free_teacher(opts, classes)
            if opts.source_free:
                teachers[name] = out_dir / f"teacher_{name}.ckpt"
                write_bytes(teachers[name], opts.teacher_ckpt.read_bytes())
                facts.update(adapt_source_free(model, data.unlabeled, opts.source_free))
                replace_weights(model, teachers[name])
        elif name in trained:
            teachers[name] = Path(trained[name])
            model = load_classifier(teachers[name])
        else:
            fitted = train_teacher(name, data, classes, opts, out_dir / f"teacher_{name}.ckpt")
            teachers[name], model = fitted.checkpoint, fitted.model
        scores = evaluate_sets(model, {"val": data.val})["val"]
        facts.update({f"teacher_{name}_val_accuracy": scores["accuracy"],
                      f"teacher_{name}_val_macro_f1": scores["macro_f1"]})
    teacher = Teacher.from_checkpoints(list(teachers.values()))
    unlabeled = data.unlabeled if opts.use_unlabeled else []
    synthetic = data.synthetic_train if opts.synthetic_images else []
    transfer = transfer_set(data.train, unlabeled, synthetic, opts.synthetic_images,
                            opts.matching.seed)
    source = _student_source(opts) if data.is_real else _distilled_student(opts)
    keep = opts.matching.keep
    if keep == "auto":  # without labelled real images, val is the synthetic stand-in
        keep = "best" if data.is_real else "last"
    result, record = match(teacher, source, transfer, data.val, out_dir / "model.ckpt",
                           replace(opts.matching, keep=keep), teacher_id=teacher_id(list(teachers.values())),
                           head_sources=opts.head_sources if source == opts.student_ckpt
                           else None, cache_dir=cache_dir, logger=logger)
    facts.update(epochs=result.epochs, transfer_images=len(transfer))
    return TrainedPhase(result, teachers, {"recipe": "matching", "teachers": list(teachers),
                                           "kept_epoch": keep, **record}, facts)


def _finetune(data, classes, opts, out_dir, logger) -> TrainedPhase:
    labels = [y for _, y in data.train]
    teachers, facts, teacher_ckpt, kd = {}, {}, None, None
    if opts.teacher_kd.get("enabled"):
        taught = train_teacher(SYNTHETIC_TEACHER, data, classes, opts,
                               out_dir / f"teacher_{SYNTHETIC_TEACHER}.ckpt")
        teacher_ckpt = teachers[SYNTHETIC_TEACHER] = taught.checkpoint
        kd = {k: opts.teacher_kd[k] for k in ("temperature", "alpha")}
        scores = evaluate_sets(taught.model, {"val": data.val})["val"]
        facts.update(teacher_val_accuracy=scores["accuracy"],
                     teacher_val_macro_f1=scores["macro_f1"])
    source = _distilled_student(opts)
    # The stand-in is synthetic: restyled toward the phase's unlabelled real images (any
    # pseudo-labelled real images of the second fine-tune with it: real to real, a mild
    # tone change).
    style = None if data.is_real else style_from_config(
        opts.style, data.unlabeled, opts.student.image_size, opts.fit.seed)

    def fine_tune(train: Items) -> tuple[FitResult, dict]:
        model, start = start_model(source, classes, labels, opts.fit,
                                   head_sources=opts.head_sources, kd=kd,
                                   teacher_ckpt=teacher_ckpt)
        replay = hardest(model, data.synthetic_train, opts.replay_size) \
            if source == opts.student_ckpt else []
        fitted = adapt(model, train, data.val, out_dir / "model.ckpt", opts.fit, replay=replay,
                       extra_val={"synthetic_val": data.synthetic_val}, style=style,
                       logger=logger)
        return fitted, {**start, "replay_size": len(replay),
                        "style_references": len(style.references) if style else 0}

    result, record = fine_tune(data.train)
    if opts.self_training.get("enabled") and data.unlabeled:
        # The labeller: the teacher fine-tuned for KD when there is one, else the student.
        labeller = taught.model if teacher_ckpt else result.model
        val_probs = predict_probs(labeller, data.val)
        threshold = confidence_threshold(val_probs, [y for _, y in data.val],
                                         opts.self_training["precision"])
        pseudo = pseudo_labels(labeller, data.unlabeled, threshold)
        result, record = fine_tune(data.train + pseudo)
        record.update(pseudo_labels=len(pseudo), pseudo_threshold=threshold)
        facts.update(pseudo_labels=len(pseudo), pseudo_threshold=threshold)
    facts["epochs"] = result.epochs
    return TrainedPhase(result, teachers, {"recipe": "finetune", "transfer": record}, facts)


def _label_free(data: PhaseData, opts: RecipeOptions) -> bool:
    return opts.label_free and opts.use_unlabeled and bool(data.unlabeled)


def _label_free_teacher(opts: RecipeOptions, classes: Sequence[str]):
    """The synthetic teacher as train_teacher left it: with no labelled image there is
    nothing to fine-tune it (or an ImageNet teacher) on, so it must know the phase's classes."""
    if tuple(opts.teachers) != (SYNTHETIC_TEACHER,):
        raise UserError(f"finetune.matching.label_free: finetune.teachers={list(opts.teachers)} "
                        "needs labelled real images to fine-tune on; set finetune.teachers="
                        f"[{SYNTHETIC_TEACHER}] or give data.real.<phase>.train")
    _require(opts.teacher_ckpt, "train_teacher")
    model = load_classifier(opts.teacher_ckpt)
    known = list(model.hparams.class_names)
    if known != list(classes):
        raise UserError(f"finetune.matching.label_free: {opts.teacher_ckpt} was trained on "
                        f"{known}, not this phase's classes {list(classes)}; use it for the "
                        "phase of train.phase only, or set finetune.matching.label_free=false")
    return opts.teacher_ckpt, model


def _student_source(opts: RecipeOptions) -> ModelSpec | Path:
    """The start of a student that matches teachers fine-tuned on labelled real images."""
    return opts.student if opts.student_start == "scratch" else _distilled_student(opts)


def _distilled_student(opts: RecipeOptions) -> Path:
    """The start of every other phase model: fine-tuning, and matching without real labels,
    begin from what the synthetic stages distilled."""
    _require(opts.student_ckpt, "distill_student")
    return opts.student_ckpt


def _require(ckpt: Path | None, stage: str) -> None:
    if ckpt is None or not Path(ckpt).is_file():
        raise UserError(f"{ckpt} is missing; run the {stage} stage first (dvc repro)")


def confidence_threshold(probs: np.ndarray, labels: Sequence[int], precision: float) -> float:
    """The lowest confidence t such that the validation images predicted with confidence
    >= t are right at rate >= `precision` (the most pseudo-labels at that precision); above
    1 (no pseudo-label) when no t reaches it. No label of the unlabelled images is needed."""
    confidence, right = probs.max(1), probs.argmax(1) == np.asarray(labels)
    order = np.argsort(-confidence, kind="stable")
    precision_at = np.cumsum(right[order]) / np.arange(1, len(order) + 1)
    reached = np.flatnonzero(precision_at >= precision)
    return float(confidence[order][reached[-1]]) if reached.size else NO_PSEUDO_LABEL


def pseudo_labels(model, folder_or_paths: str | Sequence[str], threshold: float) -> Items:
    """Unlabelled images the model classifies with confidence >= threshold, with its class."""
    paths = load_unlabelled(Path(folder_or_paths))[0] if isinstance(folder_or_paths, str) \
        else list(folder_or_paths)
    probs = predict_probs(model, [(p, 0) for p in paths])
    keep = probs.max(1) >= threshold
    return [(p, int(y)) for p, y, k in zip(paths, probs.argmax(1), keep, strict=True) if k]
