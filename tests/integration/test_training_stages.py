"""train_teacher and distill_student on `experiment=smoke`: outputs, tracking, determinism, DDP."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline.evaluate.metrics import HEADLINE
from pipeline.files import read_csv
from pipeline.models.classifier import SEMClassifier
from tests.integration.conftest import BIN, make_project, run

pytestmark = pytest.mark.integration


def _runs(project, stage):
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    exp = client.get_experiment_by_name("sem-defect-pipeline")
    return client, client.search_runs([exp.experiment_id], f"tags.stage = '{stage}'")


def _macro_f1(cm: np.ndarray) -> float:
    """Mean F1 over the classes that are true or predicted at least once (rows = true)."""
    tp = np.diag(cm)
    denom = 2 * tp + (cm.sum(0) - tp) + (cm.sum(1) - tp)
    return float(np.mean(2 * tp[denom > 0] / denom[denom > 0]))


def test_models_are_written_and_load_safely(smoke_project):
    for name in ("teacher", "student"):
        ckpt = smoke_project / f"models/{name}/model.ckpt"
        raw = torch.load(ckpt, map_location="cpu", weights_only=True)
        assert "optimizer_states" not in raw
        model = SEMClassifier.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
        assert list(model.hparams.class_names)[0] == "clean"
        metrics = json.loads((smoke_project / f"models/{name}/metrics.json").read_text())
        assert {"val", "test", "heldout"} <= set(metrics)
        assert not list((smoke_project / f"models/{name}").glob(".*work"))
    student = torch.load(smoke_project / "models/student/model.ckpt", weights_only=True)
    assert not any(k.startswith("teacher") for k in student["state_dict"])
    assert student["hyper_parameters"]["teacher_ckpt"].endswith("models/teacher/model.ckpt")


def test_training_runs_are_tracked_with_same_metric_names(smoke_project):
    client, teacher_runs = _runs(smoke_project, "train_teacher")
    _, student_runs = _runs(smoke_project, "distill_student")
    assert len(teacher_runs) == 1 and len(student_runs) == 1
    teacher, student = teacher_runs[0], student_runs[0]
    for key in ("final/test/accuracy", "final/heldout/macro_f1", "val/macro_f1", "params", "macs"):
        assert key in teacher.data.metrics and key in student.data.metrics, key
    assert teacher.data.tags["phase"] == "phase1"
    assert len(student.data.tags["checkpoint_sha256"]) == 64
    figures = [a.path for a in client.list_artifacts(student.info.run_id, "figures")]
    assert any("confusion_heldout" in p for p in figures)


def test_dvc_exp_show_and_mlflow_agree(smoke_project):
    """The params and metrics a user compares in `dvc exp show` are the ones in MLflow."""
    shown = json.loads(run(["dvc", "exp", "show", "--json"], smoke_project).stdout)
    workspace = next(r for r in shown if r["rev"] == "workspace")["data"]
    params = workspace["params"]["params.yaml"]["data"]
    for stage, model_key, opt_key, report in (
        ("train_teacher", "teacher", "train", "reports/teacher"),
        ("distill_student", "student", "distill", "reports/student"),
    ):
        mlflow_run = _runs(smoke_project, stage)[1][0].data
        for key in ("name", "image_size", "head_features", "pretrained"):
            assert mlflow_run.params[f"model.{key}"] == str(params["model"][model_key][key]), key
        for key in ("lr", "max_epochs", "batch_size", "seed"):
            assert mlflow_run.params[f"optim.{key}"] == str(params[opt_key][key]), key
        for split in ("val", "test", "heldout"):
            shown = workspace["metrics"][f"{report}/{split}.json"]["data"]
            assert set(shown) == {"accuracy", "macro_f1", "defect_recall", "false_alarm"}
            for key, value in shown.items():
                logged = mlflow_run.metrics[f"final/{split}/{HEADLINE[key]}"]
                assert logged == pytest.approx(value, abs=5e-5), (split, key)


def test_smoke_training_is_deterministic(smoke_project):
    """Rerunning the stages with the same params gives the same metrics."""
    def scores() -> dict:
        return {p.relative_to(smoke_project).as_posix(): p.read_text() for p in [
            *(smoke_project / "reports/student").glob("*.json"),
            smoke_project / "reports/curves/student.json", smoke_project /
            "models/student/metrics.json"]}

    first = scores()
    env = {"MLFLOW_TRACKING_URI": ""}
    for stage in ("train_teacher", "distill_student"):
        run([str(BIN / "python"), "-m", "pipeline", stage, "tracking.enabled=false"],
            smoke_project, env=env)
    assert scores() == first
    # Same params -> same bytes: DVC sees no change in the models (timings in the metrics
    # files do change, and are not compared).
    status = run(["dvc", "status"], smoke_project).stdout
    changed = [line.split()[-1] for line in status.splitlines() if "modified:" in line]
    assert "models/student" not in changed and "models/teacher" not in changed, status


def test_teacher_keeps_its_frozen_imagenet_units(smoke_project, tmp_path):
    """train.freeze_blocks: the stem and first blocks of the pretrained teacher (weights and
    BatchNorm statistics) leave train_teacher exactly as ImageNet gave them."""
    import shutil

    from pipeline.models.backbones import build_backbone

    project = tmp_path / "project"
    shutil.copytree(smoke_project, project, symlinks=True)
    run([str(BIN / "python"), "-m", "pipeline", "train_teacher", "train.freeze_blocks=2",
         "train.max_epochs=1", "tracking.enabled=false"], project)
    state = torch.load(project / "models/teacher/model.ckpt", weights_only=True,
                       map_location="cpu")["state_dict"]
    imagenet = build_backbone("efficientnet_lite0", 9, pretrained=True).state_dict()
    frozen = [k for k in imagenet if k.startswith(("conv_stem.", "bn1.", "blocks.0."))]
    trained = [k for k in imagenet if k.startswith("blocks.1.") and k.endswith(".weight")]
    assert frozen and trained
    assert all(torch.equal(state[f"net.backbone.{k}"], imagenet[k]) for k in frozen)
    assert not all(torch.equal(state[f"net.backbone.{k}"], imagenet[k]) for k in trained)


def test_ddp_two_cpu_processes_only_rank0_logs_and_writes(tmp_path):
    project = make_project(tmp_path / "ddp", ["experiment=smoke", "trainer=ddp"])
    for stage in ("synthesize", "split"):
        run([str(BIN / "python"), "-m", "pipeline", stage, "tracking.enabled=false"], project,
            env={"MLFLOW_TRACKING_URI": ""})
    # A checkpoint left by a killed run must not be trusted.
    scratch = project / "models/teacher/.model.work"
    scratch.mkdir(parents=True)
    (scratch / "best.ckpt").write_bytes(b"half-written")
    run([str(BIN / "python"), "-m", "pipeline", "train_teacher"], project,
        env={"MLFLOW_TRACKING_URI": ""})
    _, runs = _runs(project, "train_teacher")
    assert len(runs) == 1, "only rank 0 opens a run"
    # Rank 0 alone scores the delivered model on every image of each split (not on its DDP
    # shard) and logs what it writes.
    logged, written = runs[0].data.metrics, json.loads(
        (project / "models/teacher/metrics.json").read_text())
    for split in ("val", "test", "heldout"):
        rows = len(read_csv(project / "data/splits" / f"{split}.csv"))
        scores, cm = written[split], np.array(written[split]["confusion"])
        assert scores["n"] == cm.sum() == rows, split
        assert scores["accuracy"] == pytest.approx(np.trace(cm) / rows), split
        assert scores["macro_f1"] == pytest.approx(_macro_f1(cm)), split
        for key in ("accuracy", "macro_f1"):
            assert logged[f"final/{split}/{key}"] == pytest.approx(scores[key], abs=1e-9), key
    assert runs[0].data.params["trainer.strategy"] == "ddp"
    files = sorted(p.name for p in (project / "models/teacher").iterdir())
    assert "model.ckpt" in files and not scratch.exists()
    SEMClassifier.load_from_checkpoint(project / "models/teacher/model.ckpt", weights_only=True)
