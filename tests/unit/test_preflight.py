"""preflight: params that would fail a stage on this machine are refused before any runs."""

import subprocess
import sys

from pipeline.config import load_params
from pipeline.preflight import problems


def test_default_params_pass(root, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert problems(load_params(root), root) == []


def test_each_problem_is_named(root, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    cfg = load_params(root, [f"data.real.phase3.train={tmp_path / 'missing'}",
                             "model.student.name=edge_cn", "model.student.pretrained=true",
                             "finetune.teachers=[synthetic,efficientnet_lite7x]"])
    found = problems(cfg, root)
    assert len(found) == 4
    assert "data.real.phase3.train" in found[0] and "missing" in found[0]
    assert "model.student.name = 'edge_cn'" in found[1] and "edge_cnn" in found[1]
    assert "finetune.teachers[1]" in found[2]
    assert "unreachable" in found[3]
    assert problems(cfg, root, server=False)[:3] == found[:3]


def test_label_free_matching_needs_the_synthetic_teacher_in_the_phase_classes(root, tmp_path):
    unlabeled = [f"data.real.{p}.unlabeled={tmp_path}" for p in ("phase1", "phase3")]
    assert problems(load_params(root, unlabeled), root, server=False) == []  # label_free auto
    on = load_params(root, ["finetune.matching.label_free=true", *unlabeled])
    found = problems(on, root, server=False)
    assert len(found) == 1 and "phase3 (phase3 classes) has no data.real.phase3.train" in found[0]
    labelled = load_params(root, ["finetune.matching.label_free=true", *unlabeled,
                                  f"data.real.phase3.train={tmp_path}"])
    assert problems(labelled, root, server=False) == []
    imagenet = load_params(root, ["finetune.matching.label_free=true", unlabeled[0],
                                  "finetune.teachers=[synthetic,efficientnet_lite0]"])
    found = [f for f in problems(imagenet, root, server=False) if "label-free" in f]
    assert len(found) == 1 and "cannot fine-tune them" in found[0]


def test_the_command_refuses_in_one_message(root):
    proc = subprocess.run([sys.executable, "-m", "pipeline", "preflight",
                           "model.teacher.name=resnet1800", "tracking.enabled=false"],
                          cwd=root, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "model.teacher.name = 'resnet1800'" in proc.stderr and "Traceback" not in proc.stderr


def test_compose_refuses_params_that_cannot_run_and_keeps_params_yaml(root, tmp_path):
    import shutil

    import pytest

    from pipeline.config import write_params
    from pipeline.errors import UserError

    shutil.copytree(root / "conf", tmp_path / "conf")
    shutil.copy(root / "params.yaml", tmp_path / "params.yaml")
    before = (tmp_path / "params.yaml").read_bytes()
    with pytest.raises(UserError, match="data.real.phase1.test"):
        write_params(tmp_path, [f"data.real.phase1.test={tmp_path / 'nowhere'}"])
    assert (tmp_path / "params.yaml").read_bytes() == before
