import copy
import json
import shutil
import subprocess

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from pipeline.errors import UserError
from pipeline.export.c_array import write_c_array
from pipeline.export.manifest import SRAM_BYTES, build_manifest, edge_report
from pipeline.export.onnx_export import export_onnx, read_metadata
from pipeline.export.parity import check_gates, parity_table
from pipeline.export.quantize import quantize_onnx_int8
from pipeline.files import sha256_file
from pipeline.models.classifier import SEMClassifier
from pipeline.models.int8_grid import snap_weights_to_int8_grid

SIZE = 64
# Looser int8 bounds than a release's: this briefly trained toy net has outlier activations that
# MinMax calibration handles poorly (percentile calibration agrees 100%); broken weights fail
# them by far.
GATES = {"onnx_fp32_max_abs_diff": 1e-3, "int8_min_top1_agreement": 0.85,
         "int8_max_accuracy_drop": 0.1}


def smooth_fields(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random fields (N, 1, S, S) in [0, 1]; the label is the brightness band."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for _ in range(n):
        k = int(rng.integers(3, 12))
        img = cv2.resize(rng.random((k, k)).astype(np.float32), (SIZE, SIZE),
                         interpolation=cv2.INTER_CUBIC)
        label = int(rng.integers(0, 4))
        images.append(np.clip(img * 0.2 + label * 0.25, 0.0, 1.0))
        labels.append(label)
    return np.stack(images)[:, None].astype(np.float32), np.array(labels)


@pytest.fixture(scope="module")
def model():
    """A briefly trained student: untrained ones predict one class, which hides parity bugs."""
    torch.manual_seed(0)
    m = SEMClassifier("mobilenetv3_small_050", 4, ["a", "b", "c", "d"], {"image_size": SIZE},
                      loss={}, optimizer={"lr": 1e-2}, max_epochs=1)
    x, y = (torch.from_numpy(a) for a in smooth_fields(64, 0))
    # Gently (lr 3e-3, 30 steps): hotter training leaves logits in the tens that MinMax int8
    # cannot follow, and agreement then swings with the seed.
    opt = torch.optim.Adam(m.parameters(), 3e-3)
    m.train()
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(m(x), y, label_smoothing=0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for bn in m.modules():  # exact batch statistics instead of a half-warmed running mean
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.reset_running_stats()
            bn.momentum = None
    with torch.no_grad():
        m(x)
    return m.eval()


@pytest.fixture(scope="module")
def data():
    return {"cal": smooth_fields(64, 0)[0], "test": smooth_fields(96, 1)}


@pytest.fixture(scope="module")
def exported(model, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    meta = {"class_names": json.dumps(model.hparams.class_names), "phase": "phase1",
            "preprocess": json.dumps(model.pp.to_dict()), "checkpoint_sha256": "0" * 64}
    fp32 = export_onnx(model.net, SIZE, out / "model.onnx", metadata=meta)
    int8 = quantize_onnx_int8(fp32, out / "model_int8.onnx", data["cal"])
    with torch.no_grad():
        ref = model.net(torch.from_numpy(data["test"][0])).numpy()
    return {"dir": out, "fp32": fp32, "int8": int8, "meta": meta, "ref": ref}


def run_onnx(path, images: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path))
    return np.concatenate([sess.run(None, {"image": x[None]})[0] for x in images])


def test_onnx_matches_torch_and_carries_metadata(exported, data):
    out = run_onnx(exported["fp32"], data["test"][0])
    # float32 rounding only: 1e-4 relative to the logits' scale (about 30 for this model)
    assert np.abs(out - exported["ref"]).max() < 1e-4 * np.abs(exported["ref"]).max()
    assert read_metadata(exported["fp32"]) == exported["meta"]
    graph = onnx.load(str(exported["fp32"])).graph
    assert [i.name for i in graph.input] == ["image"] and [o.name for o in graph.output] == ["logits"]
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] == [1, 1, SIZE, SIZE]
    assert not any(n.op_type == "HardSigmoid" for n in graph.node)  # TFLM has no RELU_0_TO_1


def test_onnx_dynamic_batch_runs_a_batch(model, tmp_path, data):
    path = export_onnx(model.net, SIZE, tmp_path / "dyn.onnx", dynamic_batch=True, metadata={})
    out = ort.InferenceSession(str(path)).run(None, {"image": data["test"][0][:5]})[0]
    assert out.shape == (5, 4)


def test_onnx_int8_is_qdq_and_agrees_with_fp32(exported, data):
    ops = {n.op_type for n in onnx.load(str(exported["int8"])).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    images, labels = data["test"]
    table = parity_table(exported["ref"], {"onnx_fp32": run_onnx(exported["fp32"], images),
                                           "onnx_int8": run_onnx(exported["int8"], images)},
                         labels)
    assert check_gates(table, GATES) == []



def test_onnx_int8_is_exact_where_u8s8_accumulation_would_saturate(tmp_path):
    """Every activation at the top of its range times every weight at +127: pairs of u8 x s8
    products reach 2 * 255 * 127 = 64770, past the int16 that AVX2's u8s8 kernels (no VNNI)
    sum them in. The delivered graph is uint8 throughout, whose kernels are exact on any x86
    CPU, so the int8 model must give the fp32 result on every machine."""
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 32, 1, bias=False), torch.nn.ReLU(),
                              torch.nn.Conv2d(32, 4, 1, bias=False),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[2].weight.fill_(1.0)
    cal = np.stack([np.zeros((1, 8, 8)), np.ones((1, 8, 8))]).astype(np.float32)
    fp32 = export_onnx(net, 8, tmp_path / "sat.onnx", metadata={})
    int8 = quantize_onnx_int8(fp32, tmp_path / "sat_int8.onnx", cal)
    graph = onnx.load(str(int8)).graph
    stored = {numpy_helper.to_array(t).dtype for t in graph.initializer
              if numpy_helper.to_array(t).dtype in (np.int8, np.uint8)}
    assert stored == {np.dtype(np.uint8)}
    out = ort.InferenceSession(str(int8)).run(None, {"image": cal[1:]})[0]
    assert np.allclose(out, 32.0, rtol=0.02)  # saturated pairs would give about half


def _conv_gemm_weights(path) -> list[np.ndarray]:
    """Every Conv/Gemm weight in graph order, dequantized where the model is QDQ int8."""
    m = onnx.load(str(path))
    init = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in m.graph.initializer}
    init.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t).astype(np.float64)
                 for n in m.graph.node if n.op_type == "Constant"})  # Normalize's constants
    dequant = {n.output[0]: n for n in m.graph.node if n.op_type == "DequantizeLinear"}
    weights = []
    for node in m.graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        d = dequant.get(node.input[1])
        if d is None:
            weights.append(init[node.input[1]])
            continue
        q, scale = init[d.input[0]], init[d.input[1]]
        zero = init[d.input[2]] if len(d.input) > 2 else np.zeros_like(scale)
        axis = next((a.i for a in d.attribute if a.name == "axis"), 1)
        shape = [1] * q.ndim
        shape[axis] = -1
        shape = shape if scale.size > 1 else [1] * q.ndim
        weights.append((q - zero.reshape(shape)) * scale.reshape(shape))
    return weights


def _worst_weight_error(fp32_path, int8_path) -> float:
    """Largest int8 weight rounding error, relative to each layer's largest weight."""
    return max(np.abs(q - w).max() / np.abs(w).max() for q, w in zip(
        _conv_gemm_weights(int8_path), _conv_gemm_weights(fp32_path), strict=True))


def test_int8_grid_weights_survive_bn_folding_and_quantize_exactly(model, exported, data,
                                                                   tmp_path):
    snapped = copy.deepcopy(model.net)
    assert snap_weights_to_int8_grid(snapped) > 10
    conv = next(m for m in snapped.modules() if isinstance(m, torch.nn.Conv2d))
    steps = conv.weight / (conv.weight.abs().flatten(1).amax(1).view(-1, 1, 1, 1) / 127)
    assert torch.allclose(steps, steps.round(), atol=1e-4)
    # The exported graph folds BatchNorm into the convolutions; int8 still stores them exactly,
    # where the unsnapped model loses up to half a step (1/254 of a layer's largest weight).
    fp32 = export_onnx(snapped, SIZE, tmp_path / "snapped.onnx", metadata={})
    int8 = quantize_onnx_int8(fp32, tmp_path / "snapped_int8.onnx", data["cal"])
    assert _worst_weight_error(fp32, int8) < 1e-5
    assert _worst_weight_error(exported["fp32"], exported["int8"]) > 1e-3


def test_quantize_rejects_calibration_of_the_wrong_size(exported, tmp_path):
    with pytest.raises(UserError, match="calibration images have shape"):
        quantize_onnx_int8(exported["fp32"], tmp_path / "q.onnx", np.zeros((4, 1, 32, 32)))


def _activation_scales(path) -> dict[str, float]:
    """Scale of every activation QuantizeLinear (weights are initializers, not quantized here)."""
    m = onnx.load(str(path))
    init = {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}
    return {n.input[0]: float(init[n.input[1]]) for n in m.graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] not in init}


def test_percentile_calibration_clips_ranges_that_minmax_keeps(exported, data, tmp_path):
    cal = data["cal"].copy()
    cal[0] = 1.0  # one saturated frame: its extremes set every MinMax range
    minmax = _activation_scales(quantize_onnx_int8(exported["fp32"], tmp_path / "mm.onnx", cal))
    pct = _activation_scales(quantize_onnx_int8(exported["fp32"], tmp_path / "p.onnx", cal,
                                                method="percentile", percentile=99.0))
    assert minmax.keys() == pct.keys() and len(pct) > 3
    assert all(pct[k] <= minmax[k] * 1.0001 for k in pct)
    assert sum(pct[k] < 0.9 * minmax[k] for k in pct) >= len(pct) // 2


def test_quantize_rejects_an_unknown_calibration_method(exported, data, tmp_path):
    with pytest.raises(UserError, match="quantize.onnx_calibration.method"):
        quantize_onnx_int8(exported["fp32"], tmp_path / "q.onnx", data["cal"], method="median")
    assert not (tmp_path / "q.onnx").exists()


def test_gates_fail_for_a_model_with_broken_int8_weights(exported, data, tmp_path):
    m = onnx.load(str(exported["int8"]))
    gemm = next(n for n in m.graph.node if n.op_type == "Gemm")
    # Gemm's weight comes from DequantizeLinear(int8 initializer): reverse its rows.
    deq = next(n for n in m.graph.node if n.output[0] == gemm.input[1])
    init = next(i for i in m.graph.initializer if i.name == deq.input[0])
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init)[::-1].copy(), init.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(m, str(broken))
    images, labels = data["test"]
    table = parity_table(exported["ref"], {"onnx_int8": run_onnx(broken, images)}, labels)
    failures = check_gates(table, {k: v for k, v in GATES.items() if k.startswith("int8")})
    assert any("top1_agreement" in f for f in failures)
    assert any("accuracy_drop" in f for f in failures)


def test_parity_table_values_and_gate_messages():
    ref = np.array([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 2.0]])
    labels = np.array([0, 1, 0, 0])
    wrong = ref[:, ::-1]
    table = parity_table(ref, {"onnx_fp32": ref + 1e-5, "tflite_int8": wrong}, labels)
    assert table["reference"] == {"accuracy": 0.75, "n": 4}
    assert table["tflite_int8"]["top1_agreement"] == 0.0
    assert table["tflite_int8"]["accuracy_delta"] == pytest.approx(-0.5)
    assert table["onnx_fp32"]["max_abs_logit_diff"] == pytest.approx(1e-5)
    failures = check_gates(table, GATES)
    assert len(failures) == 2 and all(f.startswith("tflite_int8") for f in failures)
    assert check_gates(table, {"onnx_fp32_max_abs_diff": 1e-6}) != []


def test_parity_table_tells_int8_ties_from_reorderings():
    ref = np.array([[2.0, 1.9, 0.0], [0.0, 1.9, 2.0], [2.0, 0.0, 1.0], [0.0, 1.0, 2.0]])
    # Quantized on a 0.25 grid: images 0 and 1 tie at the top; argmax takes the first class,
    # which flips image 1 but not image 0. Image 3 is reordered without a tie.
    quant = np.array([[2.0, 2.0, 0.0], [0.0, 2.0, 2.0], [2.0, 0.0, 1.0], [0.0, 2.25, 2.0]])
    row = parity_table(ref, {"tflite_int8": quant}, np.array([0, 2, 0, 2]))["tflite_int8"]
    assert row["top1_agreement"] == pytest.approx(0.5)
    assert row["top1_ties"] == pytest.approx(0.5)
    assert row["disagreements_at_ties"] == pytest.approx(0.25)


def test_gates_with_unknown_names_are_user_errors():
    table = parity_table(np.eye(2), {"onnx_fp32": np.eye(2)}, np.array([0, 1]))
    with pytest.raises(UserError, match="matches no exported format"):
        check_gates(table, {"tflite_int8_min_top1_agreement": 0.9})
    with pytest.raises(UserError, match="must end in one of"):
        check_gates(table, {"onnx_fp32_tolerance": 0.1})


def test_c_array_holds_the_bytes_and_compiles(tmp_path):
    data = bytes(range(256)) * 3 + b"\x07"
    src = tmp_path / "model.tflite"
    src.write_bytes(data)
    cc, h = tmp_path / "model_data.cc", tmp_path / "model_data.h"
    write_c_array(src, cc, h, symbol="g_model")
    text = cc.read_text()
    assert "alignas(16) const unsigned char g_model[]" in text
    assert f"const int g_model_len = {len(data)};" in text
    body = text[text.index("{") + 1: text.index("}")]
    assert bytes(int(v, 16) for v in body.replace("\n", "").split(",") if v.strip()) == data
    assert "#ifndef MODEL_DATA_H_" in h.read_text()
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ not installed")
    subprocess.run([gxx, "-c", "-std=c++17", "-Wall", "-Werror", str(cc), "-o",
                    str(tmp_path / "model_data.o")], check=True)


def test_manifest_hashes_match_the_files(tmp_path):
    a, b = tmp_path / "a.onnx", tmp_path / "b.tflite"
    a.write_bytes(b"first")
    b.write_bytes(b"second file")
    man = build_manifest([a, b], phase="phase1", gates_passed=True)
    assert man["files"]["a.onnx"] == {"sha256": sha256_file(a), "bytes": 5}
    assert man["files"]["b.tflite"]["sha256"] == sha256_file(b)
    assert man["phase"] == "phase1" and man["gates_passed"] is True


def test_edge_report_budget_flags(tmp_path):
    model = tmp_path / "m.tflite"
    model.write_bytes(b"\0" * 1_000_000)
    rep = edge_report(model, 300_000, 60_000_000)
    assert rep["flash_bytes"] == 1_000_000
    assert rep["ram_total_model_in_sram_bytes"] == 1_300_000
    assert rep["m7_latency_ms_estimate"] == pytest.approx(120.0)  # 0.5 MAC/cycle at 1 GHz
    assert rep["fits_sram_model_in_flash"] and rep["fits_sram_model_in_sram"]
    big = edge_report(model, SRAM_BYTES - 10, 1)
    assert big["fits_sram_model_in_flash"] and not big["fits_sram_model_in_sram"]


# ---- the TFLite / TFLM toolchain (TensorFlow, onnx2tf, tflite-micro) -------------------

@pytest.fixture(scope="module")
def tflite_models(exported, data):
    pytest.importorskip("onnx2tf")
    pytest.importorskip("tflite_micro")
    from pipeline.export.tflite import convert_tflite

    return convert_tflite(exported["fp32"], exported["dir"] / "tflite", data["cal"], int16x8=True)


def test_tflite_int8_takes_raw_pixels_and_agrees(tflite_models, exported, data):
    from pipeline.export.tflite import tflite_io, tflite_predict

    io = tflite_io(tflite_models["int8"])
    assert io["input"]["dtype"] == "int8" and io["output"]["dtype"] == "int8"
    assert io["input"]["zero_point"] == -128
    assert io["input"]["scale"] == pytest.approx(1 / 255, rel=1e-4)
    assert io["input"]["shape"] == [1, SIZE, SIZE, 1]
    images, labels = data["test"]
    table = parity_table(exported["ref"], {
        "tflite_float": tflite_predict(tflite_models["float"], images),
        "tflite_int8": tflite_predict(tflite_models["int8"], images)}, labels)
    gates = {**GATES, "tflite_float_max_abs_diff": 1e-3}
    del gates["onnx_fp32_max_abs_diff"]
    assert check_gates(table, gates) == []


def test_tflite_int8_normalize_keeps_every_gray_level(tflite_models, model):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(str(tflite_models["int8"]))
    first = interpreter._get_ops_details()[0]
    assert first["op_name"] == "CONV_2D"  # Normalize as one op, not SUB then MUL
    out = interpreter.get_tensor_details()[first["outputs"][0]]["quantization_parameters"]
    # One output step per input gray level, and pixel value `mean * 255` lands on zero.
    assert out["scales"][0] == pytest.approx(1 / (255 * model.pp.std), rel=1e-4)
    assert out["zero_points"][0] == 0


def test_tflite_16x8_is_far_closer_to_fp32_and_runs_on_tflm(tflite_models, exported, data):
    from pipeline.export.tflite import tflite_io, tflite_predict
    from pipeline.export.tflm import tflm_check

    io = tflite_io(tflite_models["int16x8"])
    assert io["input"]["dtype"] == "int16" and io["output"]["dtype"] == "int16"
    images, ref = data["test"][0], exported["ref"]

    def sqnr(logits):
        return 10 * np.log10((ref ** 2).mean() / ((logits - ref) ** 2).mean())

    # Reference kernels (what TFLM runs): the host's optimized kernels differ between CPUs.
    wide, narrow = (tflite_predict(tflite_models[k], images, reference=True)
                    for k in ("int16x8", "int8"))
    # Measured 24.6 against 8.0 dB here and 18.3 against 9.5 on another x86 machine (the
    # converter's float calibration differs by CPU); 3 dB holds with room on both.
    assert sqnr(wide) > sqnr(narrow) + 3
    assert (wide.argmax(1) == ref.argmax(1)).mean() >= (narrow.argmax(1) == ref.argmax(1)).mean()
    wide_tflm = tflm_check(tflite_models["int16x8"], images[:3])
    # The float HARD_SWISH between int16 ops may round differently in TFLite (CPU-specific
    # kernels) and TFLM (portable C): at most 1 int16 output step on an AMD EPYC, 3 on an
    # Intel Xeon. 16 steps is 1/16 of one int8 step (256 int16 steps), far below what int8
    # resolves.
    assert wide_tflm["max_diff_output_steps"] <= 16
    # TFLite has no int16 HARD_SWISH: MobileNetV3 keeps it in float (edge_cnn has none).
    assert set(wide_tflm["float_ops"]) <= {"HARD_SWISH", "QUANTIZE"}
    assert wide_tflm["arena_bytes"] > tflm_check(tflite_models["int8"], images[:1])["arena_bytes"]


def test_tflm_runs_the_int8_model_exactly(tflite_models, data):
    from pipeline.export.tflm import tflm_check

    res = tflm_check(tflite_models["int8"], data["test"][0][:3])
    assert res["outputs_match"] and res["max_abs_diff_vs_tflite"] == 0.0
    assert 10_000 < res["arena_bytes"] < SRAM_BYTES
    assert res["float_ops"] == []  # fully int8, squeeze-excite included
    assert "HARD_SWISH" in res["ops"]
    assert not {"RELU_0_TO_1", "LOGISTIC", "HARD_SIGMOID"} & set(res["ops"])


def test_tflm_rejects_an_unsupported_op(tmp_path):
    tf = pytest.importorskip("tensorflow")
    pytest.importorskip("tflite_micro")
    from pipeline.export.tflm import tflm_check

    @tf.function(input_signature=[tf.TensorSpec([1, 8, 8, 1], tf.float32)])
    def prod(x):  # REDUCE_PROD is a TFLite builtin that TFLM has no kernel for
        return tf.math.reduce_prod(x, axis=2) + 1.0

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [prod.get_concrete_function()], prod)
    path = tmp_path / "prod.tflite"
    path.write_bytes(converter.convert())
    with pytest.raises(UserError, match="ops TFLM does not support: REDUCE_PROD"):
        tflm_check(path, np.zeros((1, 1, 8, 8), np.float32))


def test_onnx_exports_are_byte_reproducible(model, exported, data, tmp_path):
    fp32 = export_onnx(model.net, SIZE, tmp_path / "model.onnx", metadata=exported["meta"])
    int8 = quantize_onnx_int8(fp32, tmp_path / "model_int8.onnx", data["cal"])
    assert sha256_file(fp32) == sha256_file(exported["fp32"])
    assert sha256_file(int8) == sha256_file(exported["int8"])


def test_tflm_arena_fits_small_models_with_large_activations(tmp_path):
    """A model of a few hundred bytes with a 1 MB activation: the arena is measured, not
    refused (tflite-micro's default arena of 10x the model size would be far too small)."""
    tf = pytest.importorskip("tensorflow")
    pytest.importorskip("tflite_micro")
    from pipeline.export.tflm import tflm_check

    kernel = tf.constant(np.random.default_rng(0).normal(size=(3, 3, 1, 16)), tf.float32)

    @tf.function(input_signature=[tf.TensorSpec([1, 128, 128, 1], tf.float32)])
    def conv(x):
        return tf.reduce_mean(tf.nn.conv2d(x, kernel, 1, "SAME"), axis=[1, 2])

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [conv.get_concrete_function()], conv)
    path = tmp_path / "conv.tflite"
    path.write_bytes(converter.convert())
    res = tflm_check(path, np.random.default_rng(1).random((1, 1, 128, 128), np.float32))
    assert res["arena_bytes"] >= 128 * 128 * 16 * 4  # the float conv output alone
    assert res["max_abs_diff_vs_tflite"] < 1e-4


def test_calibration_never_draws_test_images_and_parity_only_test_ones():
    from pipeline.export.deliver import pick_samples

    real = [(f"real_train_{i}.png", 0) for i in range(50)]
    synthetic = [(f"syn_trainval_{i}.png", 1) for i in range(400)]
    test = [(f"test_{i}.png", 2) for i in range(300)]
    q = {"seed": 3, "calibration_images": 120, "parity_images": 100}
    cal, parity = pick_samples(real, synthetic, test, q)
    assert not {p for p, _ in cal} & {p for p, _ in test}
    assert {p for p, _ in parity} <= {p for p, _ in test} and len(parity) == 100
    assert sum(p.startswith("real") for p, _ in cal) == 50  # all 50 real (the share is 60)
    assert sum(p.startswith("syn") for p, _ in cal) == 60
    # The parity sample does not move when the calibration size changes.
    assert pick_samples(real, synthetic, test, {**q, "calibration_images": 10})[1] == parity
