"""Where every stage writes, relative to the project root: the one place for output paths.

Stages, benchmarks and tests take paths from here; a test checks dvc.yaml's outs and metrics
against `stage_outputs`.
"""

from __future__ import annotations

from pathlib import Path

SYNTHETIC = Path("data/synthetic")
SPLITS = Path("data/splits")
TEACHER = Path("models/teacher")
STUDENT = Path("models/student")
SYNTHESIZE_REPORT = Path("reports/data/synthesize.json")
SPLIT_REPORT = Path("reports/data/split.json")
DOMAIN_GAP = Path("reports/data/domain_gap")  # one folder per real folder, and summary.json
# DVC metrics are folders of small files, one row of `dvc metrics show` each: `<set>.json`
# with the headline scores of one test set, or `edge.json`. Everything else a stage measures
# goes to the JSON reports beside them.
TEACHER_METRICS = Path("reports/teacher")
STUDENT_METRICS = Path("reports/student")
CHECKPOINT = "model.ckpt"
REAL_DATA = "real_data.json"  # beside a phase's checkpoint: the real images it used
MANIFEST = "manifest.json"


# Top-level folders stage outputs live in (for clearing what killed stages left behind).
OUTPUT_ROOTS = ("data", "models", "artifacts", "reports")


def phase_model(phase: str) -> Path:
    """finetune_real@phase: the delivered checkpoint and what it was trained on."""
    return Path("models") / phase


def phase_model_metrics(phase: str) -> Path:
    """finetune_real@phase's DVC metrics: the phase's fp32 checkpoint on each scored set."""
    return reports(phase) / "fp32"


def training_curve(model: str) -> Path:
    """Scores per epoch of a trained model (teacher, student, a phase), for dvc plots."""
    return Path("reports/curves") / f"{model}.json"


def training_time(model: str) -> Path:
    """Wall time of training a model; beside the metrics, as it changes on every run."""
    return Path("reports/timing") / f"{model}.json"


def artifacts(phase: str) -> Path:
    """quantize@phase: ONNX, TFLite, C arrays, parity and manifest."""
    return Path("artifacts") / phase


def artifact_report(phase: str) -> Path:
    """quantize@phase: parity, edge figures and host timings (not part of the artifacts)."""
    return Path("reports/artifacts") / f"{phase}.json"


def reports(phase: str) -> Path:
    """evaluate@phase: metrics, predictions, confusion data and report.html."""
    return Path("reports") / phase


def phase_metrics(phase: str) -> Path:
    """evaluate@phase's DVC metrics: the delivered int8 model on each test set, and edge.json
    (flash and arena)."""
    return reports(phase) / "int8"


def stage_outputs(stage: str, phase: str | None = None) -> dict[str, list[Path]]:
    """{"outs", "metrics", "plots"} that `stage` (at `phase`) writes, as dvc.yaml lists them."""
    table = {
        "synthesize": ([SYNTHETIC, SYNTHESIZE_REPORT], [], []),
        "sim_to_real": ([DOMAIN_GAP], [], []),
        "split": ([SPLITS, SPLIT_REPORT], [], []),
        "train_teacher": ([TEACHER, training_time("teacher")], [TEACHER_METRICS],
                          [training_curve("teacher")]),
        "distill_student": ([STUDENT, training_time("student")], [STUDENT_METRICS],
                            [training_curve("student")]),
    }
    if stage in table:
        outs, metrics, plots = table[stage]
    elif stage == "finetune_real":
        outs, metrics, plots = ([phase_model(phase), training_time(phase)],
                                [phase_model_metrics(phase)], [training_curve(phase)])
    elif stage == "quantize":
        outs, metrics, plots = [artifacts(phase), artifact_report(phase)], [], []
    elif stage == "evaluate":
        folder = reports(phase)
        outs = [folder / n for n in ("report.html", "predictions.csv", "per_class.csv",
                                     "metrics.json")]
        metrics, plots = [phase_metrics(phase)], [folder / "confusion.json"]
    else:
        raise KeyError(f"unknown stage {stage!r}")
    return {"outs": list(outs), "metrics": list(metrics), "plots": list(plots)}
