"""Broken model files (truncated, corrupt, not this pipeline's, refused pickles, not the file
manifest.json records) give one UserError naming the file and the cause, never a traceback."""

import importlib.util
import json
import pickle
import re
import shutil
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from pipeline.errors import UserError
from pipeline.evaluate.inference import load_predictor
from pipeline.export.manifest import build_manifest
from pipeline.export.onnx_export import export_onnx
from pipeline.models.classifier import SEMClassifier

SIZE = 32
CLASSES = ["clean", "bridge", "via", "other"]
FIX = "re-run dvc repro / dvc checkout"


def _model() -> SEMClassifier:
    torch.manual_seed(0)
    return SEMClassifier("plain_cnn", 4, CLASSES, {"image_size": SIZE}, loss={},
                         optimizer={"lr": 1e-2}, max_epochs=1).eval()


def _checkpoint(m: SEMClassifier, **changes) -> dict:
    return {"state_dict": m.state_dict(), "hyper_parameters": dict(m.hparams),
            "pytorch-lightning_version": L.__version__, **changes}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """An (untrained) model as the quantize stage leaves it: .ckpt, .onnx, .tflite and a
    manifest.json with their sha256 and the contract."""
    m = _model()
    out = tmp_path_factory.mktemp("artifacts")
    torch.save(_checkpoint(m), out / "model.ckpt")
    contract = {"class_names": CLASSES, "preprocess": m.pp.to_dict()}
    export_onnx(m.net, SIZE, out / "model.onnx",
                metadata={k: json.dumps(v) for k, v in contract.items()})
    files = [out / "model.ckpt", out / "model.onnx"]
    if importlib.util.find_spec("onnx2tf") is not None:  # else the TFLite tests skip
        from pipeline.export.tflite import convert_tflite

        cal = np.random.default_rng(0).random((8, 1, SIZE, SIZE)).astype(np.float32)
        files.append(convert_tflite(out / "model.onnx", out, cal)["float"])
    (out / "manifest.json").write_text(json.dumps(build_manifest(files, **contract)))
    return out


def _copy(model_dir: Path, tmp_path: Path, name: str, *, manifest: bool) -> Path:
    """A copy of one model file, beside the real manifest or a contract-only one."""
    if not (model_dir / name).is_file():
        pytest.skip(f"no {name} (onnx2tf is not installed)")
    tmp_path.mkdir(exist_ok=True)
    shutil.copy(model_dir / name, tmp_path / name)
    meta = json.loads((model_dir / "manifest.json").read_text())
    if not manifest:
        del meta["files"]
    (tmp_path / "manifest.json").write_text(json.dumps(meta))
    return tmp_path / name


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _broken(path: Path, cause: str):
    """pytest.raises for the one message: the file, the cause, the fix."""
    return pytest.raises(UserError, match=rf"^model {re.escape(str(path))}: .*{cause}.*; "
                                          rf"{re.escape(FIX)}$")


def test_intact_files_pass_the_manifest_check(model_dir):
    for name in ("model.ckpt", "model.onnx", "model_float.tflite"):
        if (model_dir / name).is_file():
            assert load_predictor(model_dir / name).class_names == CLASSES


def test_file_differing_from_manifest(model_dir, tmp_path):
    # Bytes changed in the weights: onnxruntime loads it happily; only the sha256 tells.
    onnx = _copy(model_dir, tmp_path, "model.onnx", manifest=True)
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2: len(data) // 2 + 40] = b"\xff" * 40
    onnx.write_bytes(bytes(data))
    with _broken(onnx, "sha256 differs from manifest.json: the file was modified or partly "
                       "copied"):
        load_predictor(onnx)
    # A partly copied file: the size already differs.
    ckpt = _copy(model_dir, tmp_path, "model.ckpt", manifest=True)
    _truncate(ckpt)
    with _broken(ckpt, "bytes, but manifest.json records"):
        load_predictor(ckpt)
    # A manifest without "files" (or not listing the file) checks nothing.
    _truncate(_copy(model_dir, tmp_path / "unlisted", "model.ckpt", manifest=False))
    with _broken(tmp_path / "unlisted" / "model.ckpt", "truncated or not a PyTorch checkpoint"):
        load_predictor(tmp_path / "unlisted" / "model.ckpt")


def test_truncated_or_foreign_tflite(model_dir, tmp_path):
    tfl = _copy(model_dir, tmp_path, "model_float.tflite", manifest=False)
    _truncate(tfl)
    with _broken(tfl, "truncated or not a TFLite file"):
        load_predictor(tfl)
    tfl.write_bytes(b"not a flatbuffer at all" * 8)
    with _broken(tfl, "truncated or not a TFLite file"):
        load_predictor(tfl)


def test_corrupt_onnx(model_dir, tmp_path):
    onnx = _copy(model_dir, tmp_path, "model.onnx", manifest=False)
    _truncate(onnx)
    with _broken(onnx, "truncated or not an ONNX file"):
        load_predictor(onnx)
    onnx.write_bytes(b"\x00\xff" * 64)
    with _broken(onnx, "truncated or not an ONNX file"):
        load_predictor(onnx)
    # A broken sibling model.onnx, read for a TFLite model's contract, is named too.
    tfl = _copy(model_dir, tmp_path, "model_float.tflite", manifest=False)
    (tmp_path / "manifest.json").unlink()
    with _broken(onnx, "truncated or not an ONNX file"):
        load_predictor(tfl)


def test_broken_or_foreign_checkpoints(tmp_path):
    m = _model()
    path = tmp_path / "model.ckpt"
    path.write_bytes(b"")
    with _broken(path, "empty file"):
        load_predictor(path)
    torch.save(_checkpoint(m), path)
    _truncate(path)
    with _broken(path, "truncated or not a PyTorch checkpoint"):
        load_predictor(path)
    torch.save(m.state_dict(), path)  # a bare state_dict, not a Lightning checkpoint
    with _broken(path, "not a Lightning checkpoint of this pipeline "
                       r"\(no state_dict, hyper_parameters, pytorch-lightning_version"):
        load_predictor(path)
    torch.save(_checkpoint(m, state_dict={}), path)
    with _broken(path, "weights or hyper-parameters do not fit"):
        load_predictor(path)
    hparams = {**dict(m.hparams), "class_names": ["clean"]}
    torch.save(_checkpoint(m, hyper_parameters=hparams), path)
    with pytest.raises(UserError, match=rf"^model {re.escape(str(path))}: model: 1 class names"):
        load_predictor(path)


class _Plant:
    """Unpickling this creates a file: proof that a checkpoint was (wrongly) unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_refused_pickle_is_never_unpickled(tmp_path):
    marker = tmp_path / "unpickled"
    path = tmp_path / "model.ckpt"
    # A torch checkpoint names the refused global; a plain pickle fails earlier.
    for save, what in ((lambda: torch.save({"state_dict": {}, "x": _Plant(marker)}, path),
                        r" \(\w+\.open\)"),
                       (lambda: path.write_bytes(pickle.dumps({"x": _Plant(marker)})), "")):
        save()
        with _broken(path, rf"Python objects{what} that torch.load\(weights_only=True\) "
                           "refuses to unpickle"):
            load_predictor(path)
        assert not marker.exists()
