"""One predictor interface over every model format: .ckpt (torch), .onnx and .tflite.

Every format feeds exactly `Preprocess.__call__` of the model's stored preprocess spec (the
single definition of the model input) and returns softmax probabilities, so evaluations of
the same model in different formats differ only by the format's own arithmetic.

Where the contract (class names + preprocess) comes from:
- .ckpt: the checkpoint's hyper-parameters;
- .onnx: the file's metadata_props (written by `export_onnx`), else as for .tflite;
- .tflite: `manifest.json` in the same folder (keys "class_names", "preprocess", written by
  the quantize stage), else the metadata of a sibling `model.onnx`.
The same source may hold "output_code": integer models whose output has the code's width
(tiles x classes, pipeline.export.output_code) are decoded to logits before the softmax.

A file that cannot be loaded (empty, truncated, corrupt, not this pipeline's kind of model,
refused by torch's weights-only loader, or not the file `manifest.json` beside it records)
is a UserError naming the file and the likely cause.
"""

from __future__ import annotations

import json
import os
import pickle
import platform
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from pipeline.errors import UserError
from pipeline.export.output_code import OutputCode
from pipeline.files import sha256_file
from pipeline.models.preprocess import Preprocess

FORMATS = {".ckpt": "torch", ".onnx": "onnx", ".tflite": "tflite"}
MANIFEST_NAME = "manifest.json"
SIBLING_ONNX = "model.onnx"
_BATCH = 64  # images preprocessed and run at once; bounds memory for big folders
_FIX = "re-run dvc repro / dvc checkout"


class Predictor(Protocol):
    class_names: list[str]
    image_size: int
    fmt: str  # "torch" | "onnx" | "tflite"
    path: Path

    def predict(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """uint8 (H, W) images → (N, C) float32 softmax probabilities."""
        ...


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


class _Predictor:
    """Preprocessing, batching and softmax shared by the formats; subclasses give `_logits`."""

    fmt = ""

    def __init__(self, path: Path, class_names: Sequence[str], pp: Preprocess,
                 code: OutputCode | None = None) -> None:
        self.path = Path(path)
        self.class_names = list(class_names)
        self.pp = pp
        self.image_size = pp.image_size
        self.code = code

    def predict(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """uint8 (H, W) images of any size → (N, C) float32 softmax probabilities."""
        chunks = []
        for start in range(0, len(images), _BATCH):
            x = np.stack([self.pp(img) for img in images[start: start + _BATCH]])
            chunks.append(self._logits(x))
        if not chunks:
            return np.zeros((0, len(self.class_names)), np.float32)
        logits = np.concatenate(chunks).astype(np.float32)
        if self.code is not None and logits.shape[1] == self.code.outputs:
            logits = self.code.decode(logits)
        if logits.shape[1] != len(self.class_names):
            raise UserError(f"{self.path} outputs {logits.shape[1]} scores but names "
                            f"{len(self.class_names)} classes; re-export the model")
        return softmax(logits)

    def _logits(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class TorchPredictor(_Predictor):
    fmt = "torch"

    def __init__(self, path: Path) -> None:
        from pipeline.models.classifier import SEMClassifier

        # weights_only: a checkpoint is never unpickled, so a hostile one cannot run code.
        try:
            model = SEMClassifier.load_from_checkpoint(path, map_location="cpu",
                                                       weights_only=True)
        except UserError as exc:  # the model's own checks, which do not name the file
            raise UserError(f"model {path}: {exc}") from exc
        except Exception as exc:
            raise broken_model(path, _checkpoint_cause(Path(path), exc)) from exc
        super().__init__(path, model.hparams.class_names, model.pp)
        self._net = model.net.eval()

    @torch.no_grad()
    def _logits(self, x: np.ndarray) -> np.ndarray:
        return self._net(torch.from_numpy(x)).numpy()


class OnnxPredictor(_Predictor):
    fmt = "onnx"

    def __init__(self, path: Path, contract: tuple | None = None) -> None:
        import onnxruntime as ort

        super().__init__(path, *(contract or _contract(Path(path))))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1  # like the TFLite interpreter: comparable latencies
        try:
            self._sess = ort.InferenceSession(str(path), opts,
                                              providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise broken_model(path, _onnx_cause(exc)) from exc

    def _logits(self, x: np.ndarray) -> np.ndarray:
        from pipeline.export.onnx_export import run_onnx

        return run_onnx(self._sess, x)


class TFLitePredictor(_Predictor):
    """Float or integer (int8, int16x8) TFLite; integer input is quantized, output dequantized."""

    fmt = "tflite"

    def __init__(self, path: Path, contract: tuple | None = None) -> None:
        # One interpreter for the predictor's life: `tflite_predict` builds one per call,
        # which would dominate batch-1 latency.
        from pipeline.export.tflite import load_interpreter

        super().__init__(path, *(contract or _contract(Path(path))))
        try:
            self._it = load_interpreter(Path(path))
        except ValueError as exc:  # the flatbuffer verifier's "not a valid Flatbuffer buffer"
            raise broken_model(path, f"truncated or not a TFLite file ({_first_line(exc)})"
                               ) from exc
        except Exception as exc:
            raise broken_model(path, "the TFLite runtime cannot prepare it "
                                     f"({_first_line(exc)})") from exc

    def _logits(self, x: np.ndarray) -> np.ndarray:
        from pipeline.export.tflite import interpreter_logits

        return interpreter_logits(self._it, x)


_PREDICTORS = {"torch": TorchPredictor, "onnx": OnnxPredictor, "tflite": TFLitePredictor}


def load_predictor(model_path: str | Path, contract: tuple | None = None) -> Predictor:
    """A Predictor for a .ckpt, .onnx or .tflite file; UserError for a missing, unknown or
    broken file, or one whose sha256 differs from the manifest.json beside it.

    `contract`: (class names, Preprocess, output code) for an exported file whose manifest
    is not written yet (the quantize stage; an old manifest there is not checked); by
    default it is read as the module doc says.
    """
    path = Path(model_path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UserError(f"model {path}: unknown format {path.suffix or '(no suffix)'}; "
                        f"give a {', '.join(FORMATS)} file")
    if not path.is_file():
        raise UserError(f"model {path} not found; check the path or build it (dvc repro)")
    if path.stat().st_size == 0:
        raise broken_model(path, "empty file (0 bytes): it was never written completely")
    if contract is None:
        check_manifest(path)
    if contract is not None and fmt != "torch":
        return _PREDICTORS[fmt](path, contract)
    return _PREDICTORS[fmt](path)


def broken_model(path: Path, cause: str) -> UserError:
    """The one message for a model file that cannot be used: file, likely cause, fix."""
    return UserError(f"model {path}: {cause}; {_FIX}")


def read_manifest(model_path: Path) -> dict:
    """manifest.json beside a model ({} when there is none); UserError when it is broken."""
    manifest = Path(model_path).parent / MANIFEST_NAME
    if not manifest.is_file():
        return {}
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{manifest} is not valid JSON ({exc}); rebuild it (dvc repro)") from exc
    if not isinstance(data, dict):
        raise UserError(f"{manifest} holds no JSON object; rebuild it (dvc repro)")
    return data


def check_manifest(path: Path) -> None:
    """UserError when manifest.json beside `path` records another size or sha256 for it.

    Files the manifest does not list (or a folder without one) are not checked.
    """
    files = read_manifest(path).get("files")
    entry = files.get(path.name) if isinstance(files, dict) else None
    if not isinstance(entry, dict) or "sha256" not in entry:
        return
    size = path.stat().st_size
    if isinstance(entry.get("bytes"), int) and size != entry["bytes"]:
        raise broken_model(path, f"{size} bytes, but {MANIFEST_NAME} records {entry['bytes']}: "
                                 "the file was truncated, modified or partly copied")
    if sha256_file(path) != entry["sha256"]:
        raise broken_model(path, f"sha256 differs from {MANIFEST_NAME}: the file was modified "
                                 "or partly copied")


def _checkpoint_cause(path: Path, exc: Exception) -> str:
    """Why Lightning could not load a checkpoint, from a second, weights-only look at it."""
    refused = exc if isinstance(exc, pickle.UnpicklingError) else None
    if refused is None:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as again:
            refused = again
        except Exception:
            return "truncated or not a PyTorch checkpoint"
    if refused is not None:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(refused))
        what = f" ({found.group(1)})" if found else ""
        return (f"it holds Python objects{what} that torch.load(weights_only=True) refuses to "
                "unpickle; it is not loaded, for safety (a checkpoint this pipeline writes "
                "holds only tensors and plain values)")
    keys = ("state_dict", "hyper_parameters", "pytorch-lightning_version")
    missing = [k for k in keys if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        return (f"not a Lightning checkpoint of this pipeline (no {', '.join(missing)}; "
                "a bare state_dict is not enough)")
    return ("its weights or hyper-parameters do not fit this pipeline's model "
            f"({type(exc).__name__}: {_first_line(exc)})")


def _onnx_cause(exc: Exception) -> str:
    from google.protobuf.message import DecodeError
    from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument, InvalidProtobuf

    if isinstance(exc, DecodeError | InvalidProtobuf) or (
            isinstance(exc, InvalidArgument) and "No graph" in str(exc)):
        return "truncated or not an ONNX file"
    return f"onnxruntime cannot run it ({_first_line(exc)})"


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _read_metadata(path: Path) -> dict[str, str]:
    from pipeline.export.onnx_export import read_metadata

    try:
        return read_metadata(path)
    except Exception as exc:
        raise broken_model(path, _onnx_cause(exc)) from exc


def _contract(path: Path) -> tuple[list[str], Preprocess, OutputCode | None]:
    """(class names, Preprocess, output code) of an exported model, from the sources in the
    module doc."""
    # Read lazily: a broken sibling model.onnx matters only when nothing before it has the
    # contract.
    sources: list[tuple[Path, Callable[[], dict]]] = []
    if path.suffix.lower() == ".onnx":
        sources.append((path, lambda: _read_metadata(path)))
    manifest = path.parent / MANIFEST_NAME
    if manifest.is_file():
        sources.append((manifest, lambda: read_manifest(path)))
    sibling = path.parent / SIBLING_ONNX
    if sibling.is_file() and sibling.resolve() != path.resolve():
        sources.append((sibling, lambda: _read_metadata(sibling)))
    for source, read in sources:
        meta = read()
        if "class_names" in meta and "preprocess" in meta:
            try:
                names, pp = (_json_value(meta[k]) for k in ("class_names", "preprocess"))
            except json.JSONDecodeError as exc:
                raise UserError(f"{source}: 'class_names' or 'preprocess' is not valid JSON "
                                f"({exc}); re-export the model") from exc
            if not isinstance(names, list) or not isinstance(pp, dict):
                raise UserError(f"{source}: 'class_names' must be a list and 'preprocess' a "
                                "mapping; re-export the model")
            code = meta.get("output_code")
            code = OutputCode.from_dict(_json_value(code), str(source)) if code else None
            return [str(n) for n in names], Preprocess.from_dict(pp), code
    raise UserError(f"model {path}: no class names and preprocess found (looked in "
                    f"{'its metadata, ' if path.suffix.lower() == '.onnx' else ''}"
                    f"{manifest} and {sibling}); keep the model in the folder the quantize "
                    "stage wrote, beside its manifest.json")


def _json_value(value: object) -> object:
    """ONNX metadata holds JSON strings; manifest.json holds the values themselves."""
    return json.loads(value) if isinstance(value, str) else value


def host_latency_ms(predictor: Predictor, image_size: int | None = None, n: int = 50,
                    warmup: int = 5) -> dict:
    """Batch-1 latency of `predictor.predict` (preprocess included) on this host.

    The image is a seeded random uint8 image at `image_size` (default: the model's input
    size, so resizing costs nothing). Returns median and p90 in ms, n, format and host.
    """
    size = image_size or predictor.image_size
    img = np.random.default_rng(0).integers(0, 256, (size, size), dtype=np.uint8)
    for _ in range(warmup):
        predictor.predict([img])
    times = []
    for _ in range(n):
        start = time.perf_counter()
        predictor.predict([img])
        times.append((time.perf_counter() - start) * 1e3)
    return {"median_ms": float(np.median(times)), "p90_ms": float(np.percentile(times, 90)),
            "n": n, "format": predictor.fmt, "host": host_name()}


def host_name() -> str:
    """CPU model, architecture and core count, e.g. 'AMD EPYC (x86_64, 2 CPUs)'."""
    model = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            model = next((line.split(":", 1)[1].strip() for line in fh
                          if line.startswith("model name")), model)
    except OSError:
        pass  # not Linux: platform.processor() is the best there is
    return f"{model or 'unknown CPU'} ({platform.machine()}, {os.cpu_count()} CPUs)"
