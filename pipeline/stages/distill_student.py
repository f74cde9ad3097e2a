"""distill_student: the small student trained from the frozen teacher's logits (KL·T² plus the
hard-label loss), or without the teacher when distill.use_teacher=false (the baseline)."""

from __future__ import annotations

from pathlib import Path

from pipeline import layout
from pipeline.errors import UserError
from pipeline.stages.common import train_model

# cached: the teacher's logits on each unaugmented train image, computed once (fast: the
# student trains at its own speed); online: the teacher runs on every augmented batch.
TEACHER_LOGITS = ("cached", "online")


def run(cfg: dict, root: Path) -> None:
    distill = cfg["distill"]
    use_teacher = distill["use_teacher"]
    if distill["teacher_logits"] not in TEACHER_LOGITS:
        raise UserError(f"distill.teacher_logits={distill['teacher_logits']!r} is unknown; "
                        f"use one of {TEACHER_LOGITS}")
    train_model(
        cfg, root, stage="distill_student", model_cfg=cfg["model"]["student"], opt_cfg=distill,
        out_dir=root / layout.STUDENT, metrics_dir=root / layout.STUDENT_METRICS,
        teacher_ckpt=root / layout.TEACHER / layout.CHECKPOINT if use_teacher else None,
        kd={k: distill[k] for k in ("temperature", "alpha", "teacher_logits")} if use_teacher
        else None,
    )
