"""finetune_real, quantize and evaluate for every phase on `experiment=smoke` (stand-ins)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.data.real import STANDIN
from pipeline.files import sha256_file
from pipeline.models.classifier import SEMClassifier
from pipeline.models.surgery import classifier_layer
from tests.integration.conftest import BIN, run

pytestmark = pytest.mark.integration


def test_every_delivering_phase_has_a_full_artifact_set(smoke_project):
    for phase in ("phase1", "phase3"):
        folder = smoke_project / "artifacts" / phase
        manifest = json.loads((folder / "manifest.json").read_text())
        for name, entry in manifest["files"].items():
            assert sha256_file(folder / name) == entry["sha256"], name
        assert {"model.onnx", "model_int8.onnx", "model_int8.tflite", "model_int8.cc"} <= \
            set(manifest["files"])
        assert manifest["tflm"]["arena_bytes"] > 0 and manifest["tflm"]["outputs_match"]
        assert manifest["edge"]["flash_bytes"] == (folder / "model_int8.tflite").stat().st_size
        assert manifest["source_checkpoint_sha256"] == \
            sha256_file(smoke_project / "models" / phase / "model.ckpt")
        assert manifest["input_spec"]["input"]["dtype"] == "int8"
        wide = manifest["int16x8"]
        assert wide["input_spec"]["input"]["dtype"] == "int16" and wide["tflm"]["float_ops"] == []
        assert wide["edge"]["flash_bytes"] == (folder / "model_int16x8.tflite").stat().st_size
        assert "tflite_int16x8" in manifest["parity"]["table"]
        # The standard board contract: one int8 output per class, no output code.
        assert manifest["output_code"] is None
        assert manifest["input_spec"]["output"]["shape"] == [1, len(manifest["class_names"])]
        assert "g_model_top1" not in (folder / "model_int8.h").read_text()
        # Nothing measured on this host or commit in the artifacts (same params, same bytes).
        text = (folder / "manifest.json").read_text()
        assert "host_latency" not in text and "git_commit" not in text and '"host"' not in text
        metrics = json.loads((smoke_project / f"reports/artifacts/{phase}.json").read_text())
        assert metrics["host_latency_ms/int8"] > 0
        assert metrics["edge/int8/flash_bytes"] == manifest["edge"]["flash_bytes"]
        assert set(manifest["parity"]["goals"]) == {"int8_min_top1_agreement",
                                                     "int8_max_accuracy_drop",
                                                     "int16x8_min_top1_agreement",
                                                     "int16x8_max_accuracy_drop"}
    assert not (smoke_project / "artifacts" / "phase2").exists()
    assert not (smoke_project / "models" / "phase2").exists()


def test_phase3_model_has_the_11_class_taxonomy(smoke_project):
    manifest = json.loads((smoke_project / "artifacts/phase3/manifest.json").read_text())
    assert manifest["class_names"][:3] == ["BRIDGE", "CLEAN_CRACK", "CLEAN_LAYER"]
    assert len(manifest["class_names"]) == 11
    real = json.loads((smoke_project / "models/phase3/real_data.json").read_text())
    assert real["source"].startswith("stand-in")
    assert real["recipe"] == "finetune"
    assert real["transfer"]["replay_size"] > 0 and real["transfer"]["head_rows_new"] == []


def test_delivered_weights_sit_on_the_int8_grid(smoke_project):
    """finetune.int8_weight_grid (default on): per-channel int8 stores the weights exactly,
    after finetune.int8_equalize_images evened the blocks' activation ranges."""
    model = SEMClassifier.load_from_checkpoint(smoke_project / "models/phase1/model.ckpt",
                                               map_location="cpu", weights_only=True)
    convs = [m for m in model.net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    for layer in convs:
        w = layer.weight.detach().flatten(1)
        steps = w / (w.abs().amax(1, keepdim=True) / 127)
        assert torch.allclose(steps, steps.round(), atol=1e-3)
    metrics = json.loads((smoke_project / "models/phase1/metrics.json").read_text())["facts"]
    assert 0.0 <= metrics["int8_grid_val_top1_agreement"] <= 1.0
    # finetune.int8_equalize_images: the edge_cnn student's blocks were equalized first.
    assert 0.0 < metrics["equalize_block0_median_channel_share"] <= 1.0


def test_phase2_judges_phase1_files_unchanged(smoke_project):
    metrics = json.loads((smoke_project / "reports/phase2/metrics.json").read_text())
    judged = metrics["models"]
    assert judged["tflite_int8"]["path"] == "artifacts/phase1/model_int8.tflite"
    assert judged["tflite_int8"]["sha256"] == \
        sha256_file(smoke_project / "artifacts/phase1/model_int8.tflite")
    assert judged["torch_fp32"]["sha256"] == sha256_file(smoke_project / "models/phase1/model.ckpt")
    assert metrics["data"]["kind"] == "stand-in"
    assert metrics["class_mapping"]["mapping"]["cmp"] == "CMP"


def test_reports_metrics_and_plots_for_every_phase(smoke_project):
    for phase in ("phase1", "phase2", "phase3"):
        html = (smoke_project / f"reports/{phase}/report.html").read_text()
        assert "STAND-IN" in html.upper() and "data:image/png;base64" in html
        records = json.loads((smoke_project / f"reports/{phase}/confusion.json").read_text())
        assert records and set(records[0]) == {"actual", "predicted"}
    plots = json.loads(run(["dvc", "plots", "show", "--json"], smoke_project).stdout)
    for name in ("reports/phase1/confusion.json", "reports/curves/teacher.json",
                 "reports/curves/student.json", "reports/curves/phase3.json"):
        assert name in plots["data"], name
    curve = json.loads((smoke_project / "reports/curves/student.json").read_text())
    assert [row["epoch"] for row in curve] == list(range(len(curve))) and curve
    assert {"val/acc", "val/macro_f1", "train/loss"} <= set(curve[0])


def test_dvc_metrics_show_fits_a_terminal_with_numbers_only(smoke_project):
    """One row per test set (delivered int8 model per phase; each trained model), flash and
    arena per phase, wall times: scalar headline numbers in one shared vocabulary."""
    table = run(["dvc", "metrics", "show"], smoke_project).stdout
    assert max(len(line) for line in table.splitlines()) <= 120, table
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], smoke_project).stdout)
    files = next(iter(shown.values()))["data"]
    rows = {path: entry["data"] for path, entry in files.items()}
    for phase in ("phase1", "phase2", "phase3"):
        assert f"reports/{phase}/int8/standin_test.json" in rows, sorted(rows)
        edge = rows[f"reports/{phase}/int8/edge.json"]
        assert edge["flash_kb"] > 0 and edge["arena_kb"] > 0
    scores = rows["reports/phase1/int8/standin_test.json"]
    full = json.loads((smoke_project / "reports/phase1/metrics.json").read_text())
    delivered = full["standin_test"]["tflite_int8"]
    assert scores == {"accuracy": round(delivered["accuracy"], 4),
                      "macro_f1": round(delivered["macro_f1"], 4),
                      "defect_recall": round(delivered["defect_recall"], 4),
                      "false_alarm": round(delivered["clean_false_alarm"], 4)}
    assert rows["reports/phase3/fp32/val.json"]["accuracy"] >= 0
    timing = json.loads((smoke_project / "reports/timing/teacher.json").read_text())
    assert timing["train_seconds"] > 0
    for row in rows.values():
        assert all(isinstance(v, int | float) for v in row.values()), row


def test_predict_command_agrees_across_formats(smoke_project, tmp_path, monkeypatch):
    from pipeline.__main__ import main  # in-process: the command, without 4 interpreter starts

    monkeypatch.chdir(smoke_project)
    images = smoke_project / "data/synthetic/images/bridge"
    results = {}
    for model in ("models/phase1/model.ckpt", "artifacts/phase1/model.onnx",
                  "artifacts/phase1/model_int8.tflite", "artifacts/phase1/model_int16x8.tflite"):
        out = tmp_path / (model.replace("/", "_") + ".csv")
        assert main(["predict", model, str(images), "--out", str(out), "--format",
                     "submission"]) == 0
        with open(out, newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert list(rows[0]) == ["image_name", "predicted_class"]
        results[model] = rows
    ckpt, onnx = results["models/phase1/model.ckpt"], results["artifacts/phase1/model.onnx"]
    assert ckpt == onnx
    # The integer models: the command gives what the library predictor gives for the file,
    # and agrees with fp32 at least as the quantize gates demand of the smoke model.
    from pipeline.data.images import read_gray8
    from pipeline.evaluate.inference import load_predictor

    paths = sorted(images.glob("*.png"))
    gates = json.loads((smoke_project / "artifacts/phase1/parity.json").read_text())["gates"]
    for model, gate in (("artifacts/phase1/model_int8.tflite", "int8_min_top1_agreement"),
                        ("artifacts/phase1/model_int16x8.tflite", "int16x8_min_top1_agreement")):
        predictor = load_predictor(smoke_project / model)
        direct = predictor.predict([read_gray8(p) for p in paths]).argmax(1)
        rows = results[model]
        assert [r["image_name"] for r in rows] == [p.name for p in paths]
        assert [r["predicted_class"] for r in rows] == [predictor.class_names[i] for i in direct]
        agreement = np.mean([a["predicted_class"] == b["predicted_class"]
                             for a, b in zip(rows, ckpt, strict=True)])
        assert agreement >= gates[gate]


def test_quantize_rebuilds_the_same_bytes(smoke_project, tmp_path):
    """Same checkpoint and params: every artifact byte-identical (no timings, hosts or
    commits inside), so DVC sees nothing to rerun downstream."""
    project = tmp_path / "project"
    shutil.copytree(smoke_project, project, symlinks=True)
    before = {p.name: sha256_file(p) for p in (project / "artifacts/phase1").iterdir()}
    run([str(BIN / "python"), "-m", "pipeline", "quantize", "phase1", "tracking.enabled=false"],
        project)
    after = {p.name: sha256_file(p) for p in (project / "artifacts/phase1").iterdir()}
    assert after == before
    assert not list((project / "artifacts").glob(".*"))  # no scratch left beside the outputs


def test_evaluate_folder_command(smoke_project, tmp_path):
    """Folder names through the alias table, a corrupt file reported but not fatal."""
    folder = tmp_path / "labelled"
    for src, name in (("bridge", "Bridges"), ("via_defect", "vias"), ("other", "OTHERS")):
        (folder / name).mkdir(parents=True)
        for png in sorted((smoke_project / "data/synthetic/images" / src).glob("*.png"))[:3]:
            shutil.copy(png, folder / name / png.name)
    (folder / "vias" / "broken.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "eval"
    proc = run([str(BIN / "python"), "-m", "pipeline", "evaluate-folder",
                "artifacts/phase1/model_int8.tflite", str(folder), "--taxonomy", "phase2",
                "--out", str(out)], smoke_project)
    assert "broken.png" in proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 9 and metrics["skipped"] == 1
    assert (out / "confusion.png").is_file()


def test_finetune_with_a_real_fine_tuned_teacher(smoke_project, tmp_path):
    """finetune.teacher_kd: the teacher is fine-tuned for the phase first, kept beside the
    student, and the student is distilled from it (its checkpoint names that teacher)."""
    project = tmp_path / "project"
    shutil.copytree(smoke_project, project, symlinks=True)
    run([str(BIN / "python"), "-m", "pipeline", "finetune_real", "phase3",
         "finetune.teacher_kd.enabled=true", "tracking.enabled=false"], project)
    folder = project / "models/phase3"
    teacher = SEMClassifier.load_from_checkpoint(folder / "teacher_synthetic.ckpt",
                                                 weights_only=True)
    student = SEMClassifier.load_from_checkpoint(folder / "model.ckpt", weights_only=True)
    assert teacher.hparams.backbone == "efficientnet_lite0"
    assert list(teacher.hparams.class_names) == list(student.hparams.class_names)
    assert len(student.hparams.class_names) == 11
    assert Path(student.hparams.teacher_ckpt).resolve() == \
        (folder / "teacher_synthetic.ckpt").resolve()
    assert student.hparams.kd == {"temperature": 4.0, "alpha": 0.7}
    metrics = json.loads((project / "models/phase3/metrics.json").read_text())["facts"]
    assert 0.0 <= metrics["teacher_val_accuracy"] <= 1.0
    # Switched off again, the stage leaves no stale teacher behind.
    run([str(BIN / "python"), "-m", "pipeline", "finetune_real", "phase3",
         "tracking.enabled=false"], project)
    assert not list(folder.glob("teacher*.ckpt"))


def _labelled_folder(smoke_project: Path, folder: Path, per_class: int) -> None:
    """A stand-in "real" folder in phase-3 class folders, from synthetic images."""
    names = {"bridge": "BRIDGE", "open": "OPEN", "ler": "LER", "crack": "CRACK",
             "cmp_scratch": "CMP", "particle": "PARTICLE", "via_defect": "VIA",
             "other": "OTHERS", "clean": "CLEAN_LAYER"}
    for src, name in names.items():
        (folder / name).mkdir(parents=True)
        for png in sorted((smoke_project / "data/synthetic/images" / src).glob("*.png"))[:per_class]:
            shutil.copy(png, folder / name / png.name)


def test_matching_recipe_with_labelled_and_unlabelled_images(smoke_project, tmp_path):
    """With a labelled folder the phase trains its teachers on it and the student matches
    their ensemble on the transfer set (labelled + unlabelled + synthetic images)."""
    project = tmp_path / "project"
    shutil.copytree(smoke_project, project, symlinks=True)
    labelled, unlabelled = tmp_path / "labelled", tmp_path / "unlabelled"
    _labelled_folder(smoke_project, labelled, 6)
    unlabelled.mkdir()
    for png in sorted((smoke_project / "data/synthetic/images/particle").glob("*.png"))[6:10]:
        shutil.copy(png, unlabelled / png.name)
    run([str(BIN / "python"), "-m", "pipeline", "finetune_real", "phase3",
         f"data.real.phase3.train={labelled}", f"data.real.phase3.unlabeled={unlabelled}",
         "finetune.teachers=[synthetic,efficientnet_lite0]", "tracking.enabled=false"], project)
    folder = project / "models/phase3"
    student = SEMClassifier.load_from_checkpoint(folder / "model.ckpt", weights_only=True)
    assert student.hparams.kd == {"temperature": 1.0, "alpha": 1.0, "teacher_logits": "cached"}
    assert sorted(p.name for p in folder.glob("teacher*.ckpt")) == [
        "teacher_efficientnet_lite0.ckpt", "teacher_synthetic.ckpt"]
    record = json.loads((folder / "real_data.json").read_text())
    assert record["recipe"] == "matching" and record["source"] == "real"
    assert record["teachers"] == ["synthetic", "efficientnet_lite0"]
    n_train = len(record["train_files"])
    assert record["transfer_images"] == n_train + 4 + 16  # + unlabelled + synthetic_images
    assert record["labelled"] == n_train
    assert record["student_start"] == {"init": "scratch", "backbone": "edge_cnn"}  # the default
    assert sum(record["teacher_predicted_counts"]) == record["transfer_images"]
    assert {"path", "class", "sha256"} == set(record["train_files"][0])
    assert len(list((project / ".cache").glob("teacher_views-*.npy"))) == 1
    submission = (folder / "predictions_unlabeled.csv").read_text().splitlines()
    assert submission[0] == "image_name,predicted_class" and len(submission) == 5


@pytest.mark.parametrize("source_free", [False, True])
def test_phase1_matches_the_synthetic_teacher_on_unlabelled_real_images(smoke_project, tmp_path,
                                                                        source_free):
    """finetune.matching.label_free: with no labelled real image, the phase-1 student matches
    the synthetic teacher as trained (no teacher is fine-tuned) on the unlabelled images, the
    stand-in and synthetic images; with finetune.source_free the teacher first adapts to the
    unlabelled images (its classifier layer kept) and the student matches that one."""
    project = tmp_path / "project"
    shutil.copytree(smoke_project, project, symlinks=True)
    unlabelled = tmp_path / "unlabelled"
    unlabelled.mkdir()
    for png in sorted((smoke_project / "data/synthetic/images/particle").glob("*.png"))[6:10]:
        shutil.copy(png, unlabelled / png.name)
    run([str(BIN / "python"), "-m", "pipeline", "finetune_real", "phase1",
         f"data.real.phase1.unlabeled={unlabelled}", "finetune.matching.label_free=true",
         f"finetune.source_free.enabled={str(source_free).lower()}",
         "finetune.source_free.epochs=2", "tracking.enabled=false"], project)
    folder = project / "models/phase1"
    record = json.loads((folder / "real_data.json").read_text())
    facts = json.loads((folder / "metrics.json").read_text())["facts"]
    assert record["recipe"] == "matching" and record["source"] == STANDIN
    assert record["teachers"] == ["synthetic"]
    if source_free:
        teacher = SEMClassifier.load_from_checkpoint(folder / "teacher_synthetic.ckpt",
                                                     weights_only=True)
        synthetic = SEMClassifier.load_from_checkpoint(project / "models/teacher/model.ckpt",
                                                       weights_only=True)
        head, _ = classifier_layer(teacher.net)
        changed = {k for k, v in synthetic.state_dict().items()
                   if not torch.equal(v, teacher.state_dict()[k])}
        assert changed and not any(k.startswith(f"net.{head}.") for k in changed)
        assert facts["source_free_images"] == 4 and facts["source_free_epochs"] == 2
    else:
        assert not list(folder.glob("teacher*.ckpt"))  # the synthetic teacher, unchanged
        assert "source_free_images" not in facts
    n_standin = record["labelled"]
    assert n_standin > 0 and record["transfer_images"] == n_standin + 4 + 16
    assert record["student_start"]["init"] == "checkpoint"  # the distilled student, whatever init
    student = SEMClassifier.load_from_checkpoint(folder / "model.ckpt", weights_only=True)
    assert student.hparams.kd["alpha"] == 1.0
    assert len((folder / "predictions_unlabeled.csv").read_text().splitlines()) == 5


def test_mlflow_holds_datasets_models_aliases_and_the_pipeline_summary(smoke_project):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{smoke_project / 'mlflow.db'}")
    exp = client.get_experiment_by_name("sem-defect-pipeline").experiment_id
    for name, expected in (("train_teacher@phase1", {"synthetic-train", "synthetic-val"}),
                           ("finetune_real@phase3", {"standin-train", "standin-val"}),
                           ("quantize@phase1", {"calibration"}),
                           ("evaluate@phase2", {"synthetic_test", "standin_test"})):
        run = client.search_runs([exp], f"tags.`mlflow.runName` = '{name}'")[0]
        inputs = {d.dataset.name: d.dataset for d in run.inputs.dataset_inputs}
        assert expected <= set(inputs), name
        assert all(len(d.digest) >= 16 for d in inputs.values())
    logged = {m.name: m for m in client.search_logged_models([exp])}
    assert {"train_teacher", "distill_student", "finetune_real-phase1",
            "sem-defect-phase1", "sem-defect-phase3"} <= set(logged)
    for name in ("train_teacher", "sem-defect-phase1"):  # the run page's "Logged models"
        outputs = client.get_run(logged[name].source_run_id).outputs.model_outputs
        assert [o.model_id for o in outputs] == [logged[name].model_id], name
    for phase in ("phase1", "phase3"):
        version = client.get_model_version_by_alias(f"sem-defect-{phase}", phase)
        assert version.tags["source_checkpoint_sha256"] == \
            sha256_file(smoke_project / "models" / phase / "model.ckpt")
        assert version.tags["real_train_sha256"] == "stand-in"
    evaluate = client.search_runs([exp], "tags.`mlflow.runName` = 'evaluate@phase1'")[0]
    summary = client.get_run(evaluate.data.tags["mlflow.parentRunId"]).data.metrics
    for phase in ("phase1", "phase2", "phase3"):
        assert 0.0 <= summary[f"{phase}/standin_test/accuracy"] <= 1.0
    assert summary["phase1/flash_bytes"] == \
        (smoke_project / "artifacts/phase1/model_int8.tflite").stat().st_size


def test_phase1_adapts_with_unlabelled_real_images(smoke_project, tmp_path):
    """data.real.phase1.unlabeled feeds every adaptation at once: the stand-in restyled
    toward it (train.style), pseudo-labels above a threshold chosen on val, and batch-norm
    statistics re-estimated on it."""
    project = tmp_path / "project"
    shutil.copytree(smoke_project, project, symlinks=True)
    unlabelled = tmp_path / "unlabelled"
    unlabelled.mkdir()
    for png in sorted((smoke_project / "data/synthetic/images/other").glob("*.png"))[:6]:
        shutil.copy(png, unlabelled / png.name)
    run([str(BIN / "python"), "-m", "pipeline", "finetune_real", "phase1",
         f"data.real.phase1.unlabeled={unlabelled}", "tracking.enabled=false",
         "finetune.matching.label_free=false", "finetune.source_free.enabled=false",
         "train.style.enabled=true", "train.style.method=fda",
         "finetune.self_training.enabled=true", "finetune.self_training.precision=0.0",
         "finetune.bn_adapt.enabled=true"], project)
    folder = project / "models/phase1"
    transfer = json.loads((folder / "real_data.json").read_text())["transfer"]
    facts = json.loads((folder / "metrics.json").read_text())["facts"]
    assert transfer["style_references"] == 6
    # precision 0: the threshold is the least confident val prediction, a real confidence.
    assert 0.0 < transfer["pseudo_threshold"] <= 1.0
    assert transfer["pseudo_labels"] == facts["pseudo_labels"] <= 6
    assert facts["bn_adapt_images"] == 6
