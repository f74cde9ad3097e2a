"""train_teacher: the large teacher on the synthetic train split (phase-1 taxonomy),
validated on val and on the held-out tool profiles separately."""

from __future__ import annotations

from pathlib import Path

from pipeline.stages.common import train_model

OUT_DIR = Path("models/teacher")
METRICS = Path("reports/models/teacher.json")


def run(cfg: dict, root: Path) -> None:
    train_model(cfg, root, stage="train_teacher", model_cfg=cfg["model"]["teacher"],
                opt_cfg=cfg["train"], out_dir=root / OUT_DIR, metrics_file=root / METRICS,
                teacher_ckpt=None, kd=None)
