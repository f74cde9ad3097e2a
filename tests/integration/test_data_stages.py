"""End to end on `experiment=smoke`: synthesize and split through DVC, tracked in MLflow."""

from __future__ import annotations

import csv
import json
import shutil
import time

import cv2
import pytest
from mlflow.tracking import MlflowClient

from tests.integration.conftest import BIN, make_project, run

pytestmark = pytest.mark.integration


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_repro_builds_data_and_is_idempotent(smoke_project):
    labels = _rows(smoke_project / "data/synthetic/labels.csv")
    assert len(labels) > 0
    for name in ("train", "val", "test", "heldout"):
        assert (smoke_project / f"data/splits/{name}.csv").is_file()
    leakage = json.loads((smoke_project / "data/splits/leakage.json").read_text())
    assert leakage["ok"] is True
    grids = list((smoke_project / "data/synthetic/grids").glob("grid_class_*.png"))
    assert len(grids) >= 12
    second = run(["dvc", "repro"], smoke_project)
    assert "didn't change" in second.stdout or "up to date" in second.stdout, second.stdout
    status = run(["dvc", "status"], smoke_project)
    assert "changed" not in status.stdout, status.stdout


def test_mlflow_embedded_store_has_runs_and_grids(smoke_project):
    client = MlflowClient(tracking_uri=f"sqlite:///{smoke_project / 'mlflow.db'}")
    exp = client.get_experiment_by_name("sem-defect-pipeline")
    runs = client.search_runs([exp.experiment_id])
    stages = {r.data.tags.get("stage") for r in runs}
    assert {"synthesize", "split"} <= stages
    synth = next(r for r in runs if r.data.tags.get("stage") == "synthesize")
    assert synth.data.tags["mlflow.parentRunId"] in {r.info.run_id for r in runs}
    assert synth.data.params["synth.image_size"] == "64"
    assert synth.data.metrics["images"] > 0
    grids = [a.path for a in client.list_artifacts(synth.info.run_id, "grids")]
    assert any(p.endswith(".png") for p in grids)
    assert exp.artifact_location.startswith("file://")
    assert str(smoke_project / "mlartifacts") in exp.artifact_location


def test_synthesis_is_byte_identical_across_runs(smoke_project, tmp_path):
    """Same params -> same bytes: a second project renders identical images."""
    other = make_project(tmp_path / "again", ["experiment=smoke", "synth.workers=1"])
    run([str(BIN / "python"), "-m", "pipeline", "synthesize"], other,
        env={"MLFLOW_TRACKING_URI": ""})
    first = {r["id"]: r["sha256"] for r in _rows(smoke_project / "data/synthetic/labels.csv")}
    second = {r["id"]: r["sha256"] for r in _rows(other / "data/synthetic/labels.csv")}
    assert first == second


def test_dvc_exp_run_with_hydra_override(tmp_path):
    """DVC composes conf/ with -S overrides (Hydra) and runs what they invalidate.

    Its own project: `dvc exp run` leaves the experiment's results in the workspace."""
    project = make_project(tmp_path / "exp", ["experiment=smoke"])
    proc = run(["dvc", "exp", "run", "-S", "experiment=smoke", "-S", "synth.image_size=48",
                "split"], project)
    assert "Running stage 'synthesize'" in proc.stdout
    assert "image_size: 48" in (project / "params.yaml").read_text()
    shown = json.loads(run(["dvc", "exp", "show", "--json"], project).stdout)
    sizes = {
        exp["data"]["params"]["params.yaml"]["data"]["synth"]["image_size"]
        for rev in shown
        for exp in [rev, *[e for x in (rev.get("experiments") or []) for e in x["revs"]]]
        if exp.get("data")
    }
    assert 48 in sizes
    labels = _rows(project / "data/synthetic/labels.csv")
    assert cv2.imread(str(project / "data/synthetic" / labels[0]["path"])).shape[:2] == (48, 48)


def test_stage_logs_to_mlflow_server(tmp_path, mlflow_server):
    project = make_project(tmp_path / "p", ["experiment=smoke"])
    run([str(BIN / "python"), "-m", "pipeline", "synthesize"], project,
        env={"MLFLOW_TRACKING_URI": mlflow_server})
    client = MlflowClient(tracking_uri=mlflow_server)
    exp = client.get_experiment_by_name("sem-defect-pipeline")
    runs = client.search_runs([exp.experiment_id], "tags.stage = 'synthesize'")
    assert len(runs) >= 1
    assert runs[0].data.metrics["images"] > 0
    assert not (project / "mlflow.db").exists(), "the server, not the embedded store, was used"


def test_unreachable_server_fails_fast_and_keeps_outputs(smoke_project, tmp_path):
    project = tmp_path / "p"
    shutil.copytree(smoke_project, project, symlinks=True)
    labels = project / "data/synthetic/labels.csv"
    before = labels.read_bytes()
    start = time.time()
    proc = run([str(BIN / "python"), "-m", "pipeline", "synthesize"], project,
               env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}, check=False)
    assert proc.returncode != 0
    assert time.time() - start < 60
    assert "unreachable" in proc.stderr and "MLFLOW_TRACKING_URI" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert labels.read_bytes() == before


def test_dvc_checkout_restores_what_a_failed_stage_removed(smoke_project, tmp_path):
    """DVC removes a stage's outputs before running it; when the stage then fails, the one
    command the README gives brings back the last outputs, metrics file included."""
    project = tmp_path / "project"
    shutil.copytree(smoke_project, project, symlinks=True)
    kept = {p: (project / p).read_bytes() for p in ("data/splits/train.csv",
                                                     "data/splits/leakage.json",
                                                     "reports/data/split.json")}
    failed = run(["dvc", "repro", "-f", "-s", "split"], project,
                 env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}, check=False)
    assert failed.returncode != 0 and "unreachable" in failed.stderr + failed.stdout
    assert not (project / "data/splits/train.csv").exists()  # DVC removed them first
    run(["dvc", "checkout"], project)
    assert {p: (project / p).read_bytes() for p in kept} == kept
    assert "changed" not in run(["dvc", "status"], project).stdout


def test_sim_to_real_stage_measures_each_configured_real_folder(smoke_project, tmp_path):
    """Without real folders the stage records nothing to compare; with one (here a stand-in
    folder of synthetic images in real class folders) it writes the gap overall and per
    class, and naming the folder does not make synthesis stale."""
    assert json.loads((smoke_project / "reports/data/domain_gap/summary.json").read_text()) == {}
    project = tmp_path / "project"
    shutil.copytree(smoke_project, project, symlinks=True)
    folder = tmp_path / "real"
    labels = _rows(project / "data/synthetic/labels.csv")
    for name, fine in (("BRIDGE", "bridge"), ("OPEN", "open"), ("OTHERS", "other")):
        (folder / name).mkdir(parents=True)
        for row in [r for r in labels if r["fine_class"] == fine][:12]:
            shutil.copy(project / "data/synthetic" / row["path"], folder / name)
    run([str(BIN / "python"), "-m", "pipeline", "compose", "experiment=smoke",
         f"data.real.phase3.unlabeled={folder}"], project)
    status = run(["dvc", "status"], project).stdout
    assert "synthesize" not in status and "sim_to_real" in status, status
    run(["dvc", "repro", "sim_to_real"], project, env={"MLFLOW_TRACKING_URI": ""})
    summary = json.loads((project / "reports/data/domain_gap/summary.json").read_text())
    assert list(summary) == ["phase3_unlabeled"]
    overall = summary["phase3_unlabeled"]["overall"]
    assert overall["n_real"] == 36 and overall["frechet"] > 0
    assert 0.0 <= overall["domain_accuracy"] <= 1.0
    assert (project / "reports/data/domain_gap/phase3_unlabeled/domain_gap_stats.png").is_file()
