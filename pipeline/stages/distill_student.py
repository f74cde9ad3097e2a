"""distill_student: the small student trained from the frozen teacher's logits (KL·T² plus the
hard-label loss), or without the teacher when distill.use_teacher=false (the baseline)."""

from __future__ import annotations

from pathlib import Path

from pipeline.stages.common import train_model
from pipeline.stages.train_teacher import OUT_DIR as TEACHER_DIR

OUT_DIR = Path("models/student")
METRICS = Path("reports/models/student.json")


def run(cfg: dict, root: Path) -> None:
    distill = cfg["distill"]
    use_teacher = distill["use_teacher"]
    train_model(
        cfg, root, stage="distill_student", model_cfg=cfg["model"]["student"], opt_cfg=distill,
        out_dir=root / OUT_DIR, metrics_file=root / METRICS,
        teacher_ckpt=root / TEACHER_DIR / "model.ckpt" if use_teacher else None,
        kd={"temperature": distill["temperature"], "alpha": distill["alpha"]} if use_teacher else None,
    )
