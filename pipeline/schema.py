"""The shape of params.yaml as pydantic models: one per config group, every key typed and
ranged, unknown keys refused.

`problem(cfg)` returns one message naming the first bad key (or None); pipeline.config turns
it into a UserError. The models only check: the stages keep reading the plain dict.
Read conf/ for what each key means; the ranges here are what the code can run with.
"""

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    WrapValidator,
    model_validator,
)
from pydantic_core import PydanticCustomError

# --- value types: each failure reports what is expected, in words ---------------------------


def _expect(text: str) -> WrapValidator:
    """Report any failure of the wrapped type as one error that says `text`."""

    def wrap(value: Any, handler: Any) -> Any:
        try:
            return handler(value)
        except ValidationError:
            # pydantic would list one error per union member or list item; one line is clearer.
            raise PydanticCustomError("expected", "{expected}", {"expected": text}) from None

    return WrapValidator(wrap)


def _problem(key: str, value: Any, expected: str) -> PydanticCustomError:
    """A cross-key check's failure, naming `key` (relative to the model it is raised in)."""
    return PydanticCustomError("problem", "{expected}",
                               {"key": key, "value": value, "expected": expected})


def _unknown(key: str, allowed: list[str]) -> PydanticCustomError:
    """An unknown `key` (relative to where it is raised) and the keys its parent allows."""
    return PydanticCustomError("unknown_key", "unknown key {key}", {"key": key, "allowed": allowed})


def _bounds(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo:g}"
    return f"{'<' if hi_open else '<='} {hi:g}"


def _int(lo: int | None = None, hi: int | None = None) -> Any:
    """An integer in [lo, hi] (either bound may be open-ended); never a bool or a float."""
    text = (f"an integer from {lo} to {hi}" if lo is not None and hi is not None
            else f"an integer {_bounds(lo, hi, False, False)}")
    return Annotated[int, Field(ge=lo, le=hi), _expect(text)]


def _num(*, ge: float | None = None, gt: float | None = None, le: float | None = None,
         lt: float | None = None, what: str = "a number") -> Any:
    """A finite number (an integer is fine) within the given bounds."""
    lo, hi = (gt if ge is None else ge), (lt if le is None else le)
    text = f"{what} {_bounds(lo, hi, gt is not None, lt is not None)}"
    return Annotated[float, Field(ge=ge, gt=gt, le=le, lt=lt, allow_inf_nan=False),
                     _expect(text)]


def _choice(*values: Any) -> Any:
    """One of `values` exactly (a Literal)."""
    return Annotated[Literal[values], _expect("one of " + ", ".join(map(repr, values)))]


def _distinct(items: list) -> list:
    if len(set(items)) != len(items):
        raise ValueError("duplicates")
    return items


_NonEmptyStr = Annotated[str, Field(min_length=1)]
Bool = Annotated[bool, _expect("true or false")]
Name = Annotated[_NonEmptyStr, _expect("a non-empty string")]
Names = Annotated[list[_NonEmptyStr], Field(min_length=1), _expect("a non-empty list of names")]
DistinctNames = Annotated[list[_NonEmptyStr], Field(min_length=1), AfterValidator(_distinct),
                          _expect("a non-empty list of distinct names")]
NameList = Annotated[list[_NonEmptyStr], AfterValidator(_distinct),
                     _expect("a list of distinct names (may be empty)")]
NameMap = Annotated[dict[_NonEmptyStr, _NonEmptyStr], _expect("a mapping of names to names")]
OptionalPath = Annotated[_NonEmptyStr | None, _expect("a folder path or null")]

Seed = _int(0, 2**32 - 1)  # numpy and Lightning refuse seeds outside 32 bits
Count = _int(0)
Positive = _int(1)
Epochs = _int(1)
BatchSize = _int(1)
Patience = _int(0)  # epochs without improvement before early stopping
ImageSize = _int(16, 1024)
NearDupDistance = _int(0, 16)  # Hamming distance between 64-bit perceptual hashes
LearningRate = _num(gt=0)
WeightDecay = _num(ge=0)
WarmupEpochs = _num(ge=0)
Temperature = _num(gt=0)
Probability = _num(ge=0, le=1, what="a probability")
Weight = _num(ge=0, le=1)  # a mixing weight between two losses
ClassWeights = Annotated[
    Literal["none", "inverse", "sqrt_inverse", "effective"]
    | Annotated[list[Annotated[float, Field(ge=0, allow_inf_nan=False)]], Field(min_length=1)],
    _expect("one of 'none', 'inverse', 'sqrt_inverse', 'effective' or a list of numbers >= 0 "
            "(one per class)")]


# --- the models ------------------------------------------------------------------------------


class Section(BaseModel):
    """A config group: exactly its declared keys, strict types (no '5' for 5, no 1 for true)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        # Before extra="forbid" fires, so the message can list the keys that are allowed.
        if isinstance(data, dict):
            unknown = [k for k in data if k not in cls.model_fields]
            if unknown:
                raise _unknown(str(unknown[0]), list(cls.model_fields))
        return data


class TaxonomyPhase(Section):
    classes: DistinctNames
    from_fine: NameMap


class Taxonomy(Section):
    fine_classes: DistinctNames
    phases: Annotated[dict[_NonEmptyStr, TaxonomyPhase], Field(min_length=1)]
    aliases: NameMap

    @model_validator(mode="after")
    def _tables_complete(self) -> "Taxonomy":
        for name, phase in self.phases.items():
            key = f"phases.{name}.from_fine"
            missing = [f for f in self.fine_classes if f not in phase.from_fine]
            if missing:
                raise _problem(key, phase.from_fine, "a table with an entry for every fine "
                                                     f"class; missing {missing}")
            bad = {f: c for f, c in phase.from_fine.items()
                   if f not in self.fine_classes or c not in phase.classes}
            if bad:
                raise _problem(key, bad, f"a table from the fine classes {self.fine_classes} "
                                         f"to the classes of {name} {phase.classes}")
        return self


class Synth(Section):
    seed: Seed
    image_size: ImageSize
    supersample: _int(1, 4)
    images_per_class: Positive
    heldout_images_per_class: Count
    profiles: DistinctNames
    heldout_profiles: NameList
    workers: Positive
    grid_per_cell: _int(1, 64)
    audit_per_class: Count  # 0 skips the shortcut audit

    @model_validator(mode="after")
    def _heldout_has_profiles(self) -> "Synth":
        if self.heldout_images_per_class > 0 and not self.heldout_profiles:
            raise _problem("heldout_profiles", self.heldout_profiles,
                           "a non-empty list while heldout_images_per_class > 0")
        return self


class Split(Section):
    seed: Seed
    val_fraction: _num(gt=0, lt=0.5)
    test_fraction: _num(gt=0, lt=0.5)
    near_dup_max_distance: NearDupDistance
    fail_on_leak: Bool
    standin_val_fraction: _num(gt=0, lt=0.5)
    standin_test_fraction: _num(gt=0, lt=0.8)

    @model_validator(mode="after")
    def _standin_leaves_train(self) -> "Split":
        if self.standin_val_fraction + self.standin_test_fraction >= 1:
            raise _problem("standin_test_fraction", self.standin_test_fraction,
                           f"below 1 - standin_val_fraction = "
                           f"{1 - self.standin_val_fraction:g}, so the stand-in keeps train images")
        return self


class RealFolders(Section):
    train: OptionalPath
    test: OptionalPath
    unlabeled: OptionalPath


class RealData(Section):
    min_size: Positive  # smallest image side (pixels) the importer accepts
    phase1: RealFolders
    phase2: RealFolders
    phase3: RealFolders


class Data(Section):
    real: RealData


class Backbone(Section):
    name: Name  # a timm model or one of pipeline.models.plain_cnn's
    pretrained: Bool
    image_size: ImageSize
    drop_rate: _num(ge=0, lt=1)
    head_features: Annotated[Annotated[int, Field(ge=1)] | None,
                             _expect("an integer >= 1 or null")]


class Models(Section):
    teacher: Backbone
    student: Backbone


class Loss(Section):
    name: _choice("ce", "focal")
    label_smoothing: _num(ge=0, lt=1)
    gamma: _num(ge=0)
    alpha: Annotated[
        Annotated[float, Field(ge=0, allow_inf_nan=False)] | None
        | Annotated[list[Annotated[float, Field(ge=0, allow_inf_nan=False)]], Field(min_length=1)],
        _expect("null, a number >= 0 or a list of numbers >= 0 (one per class)")]
    class_weights: ClassWeights

    @model_validator(mode="after")
    def _smoothing_needs_ce(self) -> "Loss":
        if self.name == "focal" and self.label_smoothing:
            raise _problem("label_smoothing", self.label_smoothing,
                           "0 with name 'focal' (label smoothing works only with 'ce')")
        return self


class Augment(Section):
    enabled: Bool
    p_rot90: Probability
    p_hflip: Probability
    p_vflip: Probability
    p_affine: Probability
    p_blur: Probability
    p_noise: Probability
    p_gamma: Probability
    p_downscale: Probability


class Style(Section):
    enabled: Bool
    method: _choice("histogram", "fda")
    p: Probability
    fda_beta: _num(ge=0, le=0.5)
    references: Positive


class Train(Section):
    seed: Seed
    phase: Name  # a taxonomy phase (checked in Config)
    max_epochs: Epochs
    batch_size: BatchSize
    num_workers: Count
    lr: LearningRate
    weight_decay: WeightDecay
    warmup_epochs: WarmupEpochs
    early_stopping_patience: Patience
    freeze_blocks: Count
    sampler: _choice("shuffle", "balanced")
    loss: Loss
    augment: Augment
    style: Style


class Distill(Section):
    seed: Seed
    use_teacher: Bool
    teacher_logits: _choice("cached", "online")
    temperature: Temperature
    alpha: Weight
    max_epochs: Epochs
    batch_size: BatchSize
    lr: LearningRate
    weight_decay: WeightDecay
    warmup_epochs: WarmupEpochs
    early_stopping_patience: Patience


class FinetuneTeacher(Section):
    image_size: ImageSize
    max_epochs: Epochs
    batch_size: BatchSize
    lr: LearningRate
    freeze_blocks: Count
    early_stopping_patience: Patience


class Matching(Section):
    seed: Seed
    epochs: Epochs
    batch_size: BatchSize
    lr: LearningRate
    weight_decay: WeightDecay
    warmup_epochs: WarmupEpochs
    temperature: Temperature
    mixup_alpha: _num(ge=0)  # 0: no mixup
    label_weight: Weight
    balance: Bool
    keep: _choice("auto", "best", "last")
    synthetic_images: Count
    unlabeled: Bool
    label_free: _choice(True, False, "auto")


class Replay(Section):
    size: Count
    fraction: _num(ge=0, lt=1)  # the rest of every batch must be real images


class TeacherKD(Section):
    enabled: Bool
    temperature: Temperature
    alpha: Weight


class SelfTraining(Section):
    enabled: Bool
    precision: Probability


class BatchNormAdapt(Section):
    enabled: Bool
    batch_size: BatchSize


class SourceFree(Section):
    enabled: Bool
    epochs: Epochs
    lr: LearningRate
    batch_size: BatchSize
    pseudo_label_weight: Weight


class Finetune(Section):
    seed: Seed
    phases: DistinctNames  # phases that train (checked in Config)
    recipe: _choice("matching", "finetune")
    init: _choice("student", "scratch")
    teachers: Names  # "synthetic" or ImageNet backbone names
    teacher: FinetuneTeacher
    matching: Matching
    freeze_blocks: Count
    max_epochs: Epochs
    batch_size: BatchSize
    lr: LearningRate
    weight_decay: WeightDecay
    warmup_epochs: WarmupEpochs
    early_stopping_patience: Patience
    class_weights: ClassWeights
    int8_weight_grid: Bool
    int8_equalize_images: Count  # 0 turns equalization off
    val_fraction: _num(gt=0, lt=1)
    near_dup_max_distance: NearDupDistance
    replay: Replay
    teacher_kd: TeacherKD
    self_training: SelfTraining
    bn_adapt: BatchNormAdapt
    source_free: SourceFree

    @model_validator(mode="after")
    def _source_free_has_its_teacher(self) -> "Finetune":
        if self.source_free.enabled and self.matching.label_free is False:
            raise _problem("source_free.enabled", True, "false while matching.label_free is "
                           "false (it adapts the teacher of label-free matching)")
        return self


class OutputCode(Section):
    enabled: Bool
    logit_step: Annotated[Annotated[float, Field(gt=0, allow_inf_nan=False)] | None,
                          _expect("a number > 0 or null (plain int8 logits)")]
    margin: _num(ge=0)


class OnnxCalibration(Section):
    method: _choice("minmax", "percentile", "entropy")
    percentile: _num(gt=50, le=100)


# Gate/goal names end in the metric they bound (pipeline.export.parity) -> its valid range.
_BOUND_METRICS = {"max_abs_diff": (0.0, None), "min_top1_agreement": (0.0, 1.0),
                  "max_accuracy_drop": (0.0, 1.0)}


def _check_bounds(bounds: dict[str, float]) -> dict[str, float]:
    for key, value in bounds.items():
        metric = next((m for m in _BOUND_METRICS if key.endswith("_" + m)), None)
        if metric is None:
            raise _problem(key, value, "named <format>_<metric> with a metric among "
                                       f"{', '.join(_BOUND_METRICS)}")
        lo, hi = _BOUND_METRICS[metric]
        if value < lo or (hi is not None and value > hi):
            raise _problem(key, value, f"a number {_bounds(lo, hi, False, False)}")
    return bounds


Bounds = Annotated[dict[_NonEmptyStr, Annotated[float, Field(allow_inf_nan=False)]],
                   _expect("a mapping of <format>_<metric> names to numbers"),
                   AfterValidator(_check_bounds)]


class Quantize(Section):
    seed: Seed
    calibration_images: Positive
    warn_below: Count
    calibration_outlier_factor: _num(ge=1)  # times the median peak logit; below 1 drops most
    per_channel: Bool
    output_code: OutputCode
    int16x8: Bool
    onnx_calibration: OnnxCalibration
    parity_images: Positive
    gates: Bounds
    goals: Bounds


class Evaluate(Section):
    seed: Seed
    phases: Annotated[dict[_NonEmptyStr, _NonEmptyStr], Field(min_length=1),
                      _expect("a non-empty mapping of phase -> the phase whose model it judges")]
    robustness_images: Positive
    worst_images: Count
    localisation_images: Count


class Phase(Section):
    taxonomy: Name
    trains: Bool
    # Phases judging another phase's model (phase 2): where its classes go.
    default_class: Annotated[_NonEmptyStr | None, _expect("a class name or null")] = None
    mapping: NameMap = {}


class Phases(Section):
    phase1: Phase
    phase2: Phase
    phase3: Phase


# Lightning's accepted values (lightning.fabric.connector._PRECISION_INPUT, accelerators).
_PRECISIONS = (64, 32, 16, "64", "32", "16", "bf16", "transformer-engine",
               "transformer-engine-float16", "16-true", "16-mixed", "bf16-true", "bf16-mixed",
               "32-true", "64-true")


class Trainer(Section):
    accelerator: _choice("auto", "cpu", "gpu", "cuda", "mps", "tpu")
    devices: Annotated[
        Annotated[int, Field(ge=1)] | Literal[-1, "auto"]
        | Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)],
        _expect("a device count >= 1, -1 (all), 'auto' or a list of device indices")]
    num_nodes: Positive
    strategy: Name  # Lightning checks the name against its registry
    precision: _choice(*_PRECISIONS)
    deterministic: Annotated[bool | Literal["warn"], _expect("true, false or 'warn'")]


class Tracking(Section):
    enabled: Bool
    uri: Annotated[_NonEmptyStr | None, _expect("a tracking URI or null")]
    experiment: Name
    connect_timeout_s: _num(gt=0)


class Config(Section):
    """All of params.yaml."""

    taxonomy: Taxonomy
    synth: Synth
    split: Split
    data: Data
    model: Models
    train: Train
    distill: Distill
    finetune: Finetune
    quantize: Quantize
    evaluate: Evaluate
    phases: Phases
    trainer: Trainer
    tracking: Tracking
    seed: Seed
    experiment_name: Name

    @model_validator(mode="after")
    def _phases_agree(self) -> "Config":
        # Names that refer to other groups: caught here, not by a stage hours later.
        known = list(self.taxonomy.phases)
        if self.train.phase not in known:
            raise _problem("train.phase", self.train.phase, f"a taxonomy phase, one of {known}")
        phases = {name: getattr(self.phases, name) for name in Phases.model_fields}
        for name, phase in phases.items():
            if phase.taxonomy not in known:
                raise _problem(f"phases.{name}.taxonomy", phase.taxonomy,
                               f"a taxonomy phase, one of {known}")
        trains = [name for name, phase in phases.items() if phase.trains]
        if not set(self.finetune.phases) <= set(trains):
            raise _problem("finetune.phases", self.finetune.phases, "a list of phases that "
                           f"train (phases.<name>.trains: true), among {trains}")
        for name, judged in self.evaluate.phases.items():
            if name not in phases:
                raise _unknown(f"evaluate.phases.{name}", list(phases))
            if judged not in self.finetune.phases:
                raise _problem(f"evaluate.phases.{name}", judged, "a phase that delivers a "
                               f"model, among finetune.phases {self.finetune.phases}")
        return self


# --- messages --------------------------------------------------------------------------------

_SECTIONS: dict[str, type[Section]] = {}


def _sections(cls: type[Section]) -> None:
    for sub in cls.__subclasses__():
        _SECTIONS[sub.__name__] = sub
        _sections(sub)


_sections(Section)

# Plain pydantic error types (no _expect around them) -> what is expected.
_EXPECTED = {"bool_type": "true or false", "string_type": "a string", "int_type": "an integer",
             "float_type": "a number", "list_type": "a list", "dict_type": "a mapping"}


def _show(value: Any) -> str:
    """A value as the user wrote it in YAML terms, cut short."""
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = str(value).lower()
    else:
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _join(*parts: Any) -> str:
    return ".".join(str(p) for p in parts if p != "")


def _message(error: dict) -> str:
    loc, kind, ctx, value = error["loc"], error["type"], error.get("ctx", {}), error["input"]
    key = _join(*loc)
    if kind == "unknown_key":
        full = _join(key, ctx["key"])
        parent = full.rpartition(".")[0]
        where = f"the keys under '{parent}' are" if parent else "the top-level keys are"
        return f"unknown config key '{full}'; {where}: {', '.join(ctx['allowed'])}"
    if kind == "missing":
        return (f"config key '{key}' is missing; set it in conf/ and compose params.yaml "
                "(python -m pipeline compose)")
    if kind == "problem":
        key, value = _join(key, ctx["key"]), ctx["value"]
        expected = ctx["expected"]
    elif kind == "model_type":
        fields = _SECTIONS[ctx["class_name"]].model_fields
        expected = f"a mapping with the keys {', '.join(fields)}"
    elif kind == "expected":
        expected = ctx["expected"]
    else:
        expected = _EXPECTED.get(kind, error["msg"].removeprefix("Input should be "))
    what = f"config key '{key}'" if key else "the config"
    return f"{what} = {_show(value)} is invalid: it must be {expected}"


def problem(cfg: Any) -> str | None:
    """The first thing wrong with a whole config dict, as one message; None if it is valid."""
    try:
        Config.model_validate(cfg)
    except ValidationError as exc:
        return _message(exc.errors(include_url=False)[0])
    return None
