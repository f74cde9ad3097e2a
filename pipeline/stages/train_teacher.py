"""train_teacher: the large teacher on the synthetic train split (phase-1 taxonomy),
validated on val and on the held-out tool profiles separately."""

from __future__ import annotations

from pathlib import Path

from pipeline import layout
from pipeline.stages.common import train_model


def run(cfg: dict, root: Path) -> None:
    train_model(cfg, root, stage="train_teacher", model_cfg=cfg["model"]["teacher"],
                opt_cfg=cfg["train"], out_dir=root / layout.TEACHER,
                metrics_dir=root / layout.TEACHER_METRICS, teacher_ckpt=None, kd=None,
                freeze_blocks=cfg["train"]["freeze_blocks"])
