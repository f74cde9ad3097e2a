"""Predictors over .ckpt / .onnx / .tflite agree; the folder commands survive odd folders."""

import csv
import json
import shutil

import cv2
import lightning as L
import numpy as np
import pytest
import torch

from pipeline.errors import UserError
from pipeline.evaluate.folder import predict_folder
from pipeline.evaluate.inference import host_latency_ms, load_predictor
from pipeline.export.onnx_export import export_onnx
from pipeline.models.classifier import SEMClassifier

SIZE = 32
CLASSES = ["clean", "bridge", "via", "other"]  # phase-1 names; label = brightness band


def band_image(label: int, rng: np.random.Generator, shape=(40, 48)) -> np.ndarray:
    """A smooth random uint8 field whose mean brightness encodes the label."""
    k = int(rng.integers(3, 8))
    field = cv2.resize(rng.random((k, k)).astype(np.float32), shape[::-1],
                       interpolation=cv2.INTER_CUBIC)
    return np.clip((field * 0.15 + 0.05 + label * 0.25) * 255, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A briefly trained plain CNN saved as a weights-only checkpoint and as model.onnx."""
    torch.manual_seed(0)
    m = SEMClassifier("plain_cnn", 4, CLASSES, {"image_size": SIZE}, loss={},
                      optimizer={"lr": 1e-2}, max_epochs=1)
    rng = np.random.default_rng(0)
    labels = np.arange(64) % 4
    x = torch.from_numpy(np.stack([m.pp(band_image(int(y), rng)) for y in labels]))
    y = torch.from_numpy(labels)
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    m.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # far faster than 2 contended threads for this tiny net
    try:
        for _ in range(20):
            loss = torch.nn.functional.cross_entropy(m(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    m.eval()
    out = tmp_path_factory.mktemp("model")
    torch.save({"state_dict": m.state_dict(), "hyper_parameters": dict(m.hparams),
                "pytorch-lightning_version": L.__version__}, out / "model.ckpt")
    meta = {"class_names": json.dumps(CLASSES), "preprocess": json.dumps(m.pp.to_dict())}
    export_onnx(m.net, SIZE, out / "model.onnx", metadata=meta)
    np.save(out / "calibration.npy", x.numpy())
    return out


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(1)
    labels = np.arange(40) % 4
    return [band_image(int(y), rng, shape=(36 + y, 44)) for y in labels], labels


def test_ckpt_and_onnx_predictors_agree(model_dir, images):
    imgs, labels = images
    ckpt, onnx = (load_predictor(model_dir / n) for n in ("model.ckpt", "model.onnx"))
    assert (ckpt.fmt, onnx.fmt) == ("torch", "onnx")
    assert ckpt.class_names == onnx.class_names == CLASSES
    assert ckpt.image_size == onnx.image_size == SIZE
    p_torch, p_onnx = ckpt.predict(imgs), onnx.predict(imgs)
    assert p_torch.shape == (40, 4) and np.allclose(p_torch.sum(1), 1, atol=1e-5)
    assert np.abs(p_torch - p_onnx).max() < 1e-4
    assert (p_torch.argmax(1) == labels).mean() > 0.9  # trained, not degenerate
    assert ckpt.predict([]).shape == (0, 4)


def test_load_predictor_errors(model_dir, tmp_path):
    with pytest.raises(UserError, match="unknown format"):
        load_predictor(tmp_path / "model.pt")
    with pytest.raises(UserError, match="not found"):
        load_predictor(tmp_path / "missing.onnx")


def test_latency_reports_host_and_percentiles(model_dir):
    lat = host_latency_ms(load_predictor(model_dir / "model.onnx"), SIZE, n=5, warmup=1)
    assert 0 < lat["median_ms"] <= lat["p90_ms"]
    assert lat["format"] == "onnx" and lat["n"] == 5 and lat["host"]


@pytest.fixture(scope="module")
def tflite_dir(model_dir):
    pytest.importorskip("onnx2tf")
    from pipeline.export.tflite import convert_tflite

    convert_tflite(model_dir / "model.onnx", model_dir, np.load(model_dir / "calibration.npy"))
    return model_dir


def test_tflite_predictors_agree_with_torch(tflite_dir, images, tmp_path):
    imgs, _ = images
    ref = load_predictor(tflite_dir / "model.ckpt").predict(imgs)
    # Contract from the sibling model.onnx (no manifest.json in this folder).
    flt = load_predictor(tflite_dir / "model_float.tflite")
    assert flt.fmt == "tflite" and flt.class_names == CLASSES
    assert np.abs(flt.predict(imgs) - ref).max() < 1e-4
    assert (flt.predict(imgs).argmax(1) == ref.argmax(1)).all()
    # Contract from manifest.json when the model sits alone beside it.
    alone = tmp_path / "deploy"
    alone.mkdir()
    shutil.copy(tflite_dir / "model_int8.tflite", alone)
    with pytest.raises(UserError, match="manifest.json"):
        load_predictor(alone / "model_int8.tflite")
    (alone / "manifest.json").write_text(json.dumps(
        {"class_names": CLASSES, "preprocess": {"image_size": SIZE}}))
    int8 = load_predictor(alone / "model_int8.tflite").predict(imgs)
    assert (int8.argmax(1) == ref.argmax(1)).mean() >= 0.9


def write_folder(root, rng, folders: dict[str, int], per_class: int = 4):
    for folder, label in folders.items():
        (root / folder).mkdir(parents=True)
        for i in range(per_class):
            cv2.imwrite(str(root / folder / f"img_{i}.png"), band_image(label, rng))


def test_predict_folder_formats_and_corrupt_files(model_dir, tmp_path, capsys):
    rng = np.random.default_rng(2)
    root = tmp_path / "unlabelled"
    write_folder(root, rng, {"batch a": 0, "b": 2}, per_class=3)
    cv2.imwrite(str(root / "top.png"), band_image(1, rng))
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "notes.txt").write_text("hello")

    res = predict_folder(model_dir / "model.ckpt", root, out_csv=tmp_path / "p.csv",
                         threshold=0.5)
    assert len(res.rows) == 7
    assert {p for p, _ in res.skipped} == {str(root / "broken.png"), str(root / "notes.txt")}
    assert "broken.png" in capsys.readouterr().err
    with open(tmp_path / "p.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["image", "predicted_class", "confidence", "flagged"]
    assert {r["image"] for r in rows} >= {"top.png", "batch a/img_0.png"}
    assert all(r["predicted_class"] in CLASSES for r in rows)

    sub = tmp_path / "submission.csv"
    predict_folder(model_dir / "model.onnx", root, out_csv=sub, fmt="submission")
    lines = sub.read_text().splitlines()
    assert lines[0] == "image_name,predicted_class" and len(lines) == 8

    one = predict_folder(model_dir / "model.onnx", root / "top.png")
    assert [r["image"] for r in one.rows] == ["top.png"] and "flagged" not in one.rows[0]
    with pytest.raises(UserError, match="no readable image"):
        predict_folder(model_dir / "model.onnx", root / "broken.png")


def test_predict_folder_reads_threshold_from_manifest(model_dir, tmp_path):
    shutil.copy(model_dir / "model.onnx", tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"ood_threshold": 1.01}))
    img = tmp_path / "x.png"
    cv2.imwrite(str(img), band_image(0, np.random.default_rng(3)))
    res = predict_folder(tmp_path / "model.onnx", img)
    assert res.threshold == pytest.approx(1.01) and res.rows[0]["flagged"] is True


def test_evaluate_folder_maps_phase1_model_onto_phase2(model_dir, tmp_path, taxonomy):
    from pipeline.evaluate.folder import evaluate_folder

    rng = np.random.default_rng(4)
    root = tmp_path / "labelled"
    write_folder(root, rng, {"clean": 0, "defect bridge": 1, "Vias": 2, "OTHERS": 3})
    (root / "Vias" / "corrupt.tif").write_bytes(b"II*\x00garbage")
    classes = taxonomy.phase("phase2").classes
    out = tmp_path / "eval"
    m = evaluate_folder(model_dir / "model.ckpt", root, taxonomy=taxonomy, classes=classes,
                        out_dir=out, clean_classes=["Clean"])
    assert m["n"] == 16 and m["skipped"] == 1 and m["accuracy"] > 0.8
    assert m["class_mapping"]["mapping"] == {"clean": "Clean", "bridge": "Bridge",
                                             "via": "VIA", "other": "Other"}
    assert "defect_recall" in m and m["model"]["format"] == "torch"
    for name in ("metrics.json", "predictions.csv", "confusion.png",
                 "confusion_normalised.png", "import_report.json"):
        assert (out / name).is_file(), name
    with open(out / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["image", "actual", "predicted", "confidence"]
    assert {r["actual"] for r in rows} == {"Clean", "Bridge", "VIA", "Other"}
    skipped = json.loads((out / "import_report.json").read_text())["skipped"]
    assert skipped[0][0].endswith("corrupt.tif")
