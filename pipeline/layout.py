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
SYNTHESIZE_METRICS = Path("reports/data/synthesize.json")
SPLIT_METRICS = Path("reports/data/split.json")
TEACHER_METRICS = Path("reports/models/teacher.json")
STUDENT_METRICS = Path("reports/models/student.json")
CHECKPOINT = "model.ckpt"
REAL_DATA = "real_data.json"  # beside a phase's checkpoint: the real images it used
MANIFEST = "manifest.json"


# Top-level folders stage outputs live in (for clearing what killed stages left behind).
OUTPUT_ROOTS = ("data", "models", "artifacts", "reports")


def phase_model(phase: str) -> Path:
    """finetune_real@phase: the delivered checkpoint and what it was trained on."""
    return Path("models") / phase


def phase_model_metrics(phase: str) -> Path:
    return Path("reports/models") / f"{phase}.json"


def artifacts(phase: str) -> Path:
    """quantize@phase: ONNX, TFLite, C arrays, parity and manifest."""
    return Path("artifacts") / phase


def artifact_metrics(phase: str) -> Path:
    """quantize@phase: headline edge figures and host timings (not part of the artifacts)."""
    return Path("reports/artifacts") / f"{phase}.json"


def reports(phase: str) -> Path:
    """evaluate@phase: metrics, predictions, confusion data and report.html."""
    return Path("reports") / phase


def stage_outputs(stage: str, phase: str | None = None) -> dict[str, list[Path]]:
    """{"outs": [...], "metrics": [...]} that `stage` (at `phase`) writes, as dvc.yaml lists."""
    table = {
        "synthesize": ([SYNTHETIC], [SYNTHESIZE_METRICS]),
        "split": ([SPLITS], [SPLIT_METRICS]),
        "train_teacher": ([TEACHER], [TEACHER_METRICS]),
        "distill_student": ([STUDENT], [STUDENT_METRICS]),
    }
    if stage in table:
        outs, metrics = table[stage]
    elif stage == "finetune_real":
        outs, metrics = [phase_model(phase)], [phase_model_metrics(phase)]
    elif stage == "quantize":
        outs, metrics = [artifacts(phase)], [artifact_metrics(phase)]
    elif stage == "evaluate":
        folder = reports(phase)
        outs = [folder / n for n in ("report.html", "predictions.csv", "per_class.csv")]
        metrics = [folder / "metrics.json"]
    else:
        raise KeyError(f"unknown stage {stage!r}")
    return {"outs": list(outs), "metrics": list(metrics)}
