"""`python -m pipeline` user commands at their edges: bad arguments and broken model files are
one-line errors (exit 2), predict prints the CSV it would write, import-folder says what it
counted."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from pipeline.__main__ import main
from pipeline.export.manifest import build_manifest
from pipeline.export.onnx_export import export_onnx
from pipeline.models.classifier import SEMClassifier

REPO = Path(__file__).resolve().parents[2]
SIZE = 32
CLASSES = ["clean", "bridge", "via", "other"]


@pytest.fixture(autouse=True)
def _at_repo(monkeypatch):
    monkeypatch.chdir(REPO)  # the commands read the taxonomy from params.yaml


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """An untrained model.onnx beside a manifest.json that records its sha256."""
    torch.manual_seed(0)
    m = SEMClassifier("plain_cnn", 4, CLASSES, {"image_size": SIZE}, loss={},
                      optimizer={"lr": 1e-2}, max_epochs=1).eval()
    out = tmp_path_factory.mktemp("model")
    export_onnx(m.net, SIZE, out / "model.onnx", metadata={
        "class_names": json.dumps(CLASSES), "preprocess": json.dumps(m.pp.to_dict())})
    (out / "manifest.json").write_text(json.dumps(build_manifest([out / "model.onnx"])))
    return out


def _images(folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        cv2.imwrite(str(folder / name), rng.integers(0, 256, (40, 40), dtype=np.uint8))
    return folder


def _one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: ") and "Traceback" not in "\n".join(err)
    for needle in needles:
        assert needle in err[-1]
    return err[-1]


@pytest.mark.parametrize("item", ["CLEAN_VIA", "=CLEAN_VIA", "clean="])
def test_map_without_equals_is_a_one_line_error(capsys, tmp_path, item):
    assert main(["evaluate-folder", str(tmp_path / "m.onnx"), str(tmp_path),
                 "--map", item]) == 2
    _one_line_error(capsys, f"--map {item!r}", "MODEL_CLASS=TARGET_CLASS")


@pytest.mark.parametrize("value", ["nan", "2", "-0.1", "inf", "high"])
def test_threshold_must_be_in_unit_interval(capsys, model_dir, tmp_path, value):
    images = _images(tmp_path / "imgs", ["a.png"])
    assert main(["predict", str(model_dir / "model.onnx"), str(images),
                 "--threshold", value]) == 2
    _one_line_error(capsys, f"--threshold {value!r}", "[0, 1]")


def test_predict_stdout_is_the_csv_file(capsys, model_dir, tmp_path):
    images = _images(tmp_path / "imgs", ["plain.png", "a,b.png", 'say "hi".png'])
    out = tmp_path / "p.csv"
    assert main(["predict", str(model_dir / "model.onnx"), str(images), "--threshold", "0.5",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["predict", str(model_dir / "model.onnx"), str(images),
                 "--threshold", "0.5"]) == 0
    stdout = capsys.readouterr().out
    assert stdout == out.read_text()
    lines = stdout.splitlines()
    assert lines[0] == "image,predicted_class,confidence,flagged"
    assert lines[1].startswith('"a,b.png",') and lines[3].startswith('"say ""hi"".png",')


def test_broken_model_is_a_one_line_error(capsys, model_dir, tmp_path):
    """predict and evaluate-folder check the model against manifest.json before loading."""
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    data = (model_dir / "model.onnx").read_bytes()
    (deploy / "model.onnx").write_bytes(data[: len(data) // 2])  # partly copied
    (deploy / "manifest.json").write_text((model_dir / "manifest.json").read_text())
    images = _images(tmp_path / "labelled" / "via", ["a.png"]).parent
    model = str(deploy / "model.onnx")
    assert main(["predict", model, str(images)]) == 2
    _one_line_error(capsys, model, "manifest.json records", "dvc checkout")
    assert main(["evaluate-folder", model, str(images), "--out", str(tmp_path / "ev")]) == 2
    _one_line_error(capsys, model, "manifest.json records", "dvc checkout")
    (deploy / "manifest.json").unlink()  # no manifest: the file itself is judged
    assert main(["predict", model, str(images)]) == 2
    _one_line_error(capsys, model, "truncated or not an ONNX file")


def test_import_folder_says_it_counted_nested_subfolders(capsys, tmp_path):
    _images(tmp_path / "via", ["a.png"])
    _images(tmp_path / "via" / "tool 2" / "day 1", ["b.png", "c.png"])
    assert main(["import-folder", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Imported 3 images" in out
    assert "Counted 2 images in nested subfolders, each as its class folder's class: " \
           "via (2)" in out


def test_domain_gap_style_needs_its_reference_folder(capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["domain-gap", str(tmp_path), str(tmp_path), "--style", "fda"])
    assert "--style and --style-from go together" in capsys.readouterr().err
