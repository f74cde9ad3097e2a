"""Edge Pareto table for every shipped student: int8 TFLite flash, TFLM arena, MACs, host
latency, and (with --epochs) accuracy after a short training on the default dataset. Like the
pipeline (the same library calls: finetune.prepare_for_int8, export.deliver), trained weights
are equalized and rounded to the int8 grid, and the 16x8 model (quantize.int16x8: int16
activations) is measured beside the int8 one; agreement is on the TFLite reference kernels.

Usage (from the repo root, after `dvc repro split`):
    python bench/bench_students.py                 # sizes, arena, MACs, latency (random weights)
    python bench/bench_students.py --epochs 3      # plus fp32/int8 accuracy on synthetic test
    python bench/bench_students.py --students mobilenetv3_small_050:512   # name:head_features
Targets from the edge issue: int8 TFLite <= 600 KB flash and <= 300 KB arena for the default
student, int8 accuracy within 1 point of fp32, top-1 agreement >= 99 % (printed for the int8
and the 16x8 model).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import find_root, load_params  # noqa: E402
from pipeline.data.datamodule import SEMDataModule  # noqa: E402
from pipeline.data.split import phase_items  # noqa: E402
from pipeline.export.deliver import DeliveryOptions, deliver, image_batch  # noqa: E402
from pipeline.finetune import prepare_for_int8  # noqa: E402
from pipeline.models.backbones import count_params  # noqa: E402
from pipeline.models.classifier import SEMClassifier  # noqa: E402
from pipeline.models.preprocess import Preprocess  # noqa: E402
from pipeline.stages.common import load_splits  # noqa: E402
from pipeline.taxonomy import Taxonomy  # noqa: E402
from pipeline.training import fit  # noqa: E402

# Shipped students, plus narrower conv heads (name:head_features) as flash-budget candidates.
STUDENTS = ["edge_cnn", "mobilenetv3_small_050", "mobilenetv3_small_050:512",
            "mobilenetv3_small_050:256", "mobilenetv3_small_075", "mobilenetv3_small_100", "mobilenetv2_050",
            "mobilenetv2_050:512", "mobilenetv2_075", "plain_cnn"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=0)
    parser.add_argument("--students", nargs="*", default=STUDENTS)
    opts = parser.parse_args()
    pareto(find_root(), opts.students, opts.epochs)


def pareto(root: Path, students: list[str], epochs: int) -> list[dict]:
    """Build, optionally train for `epochs`, convert and measure each student; print the
    table as rows arrive and return the rows."""
    cfg = load_params(root)
    taxonomy = Taxonomy.from_config(cfg["taxonomy"])
    classes = list(taxonomy.phase("phase1").classes)
    size = cfg["model"]["student"]["image_size"]
    splits = {k: phase_items(v, root, taxonomy, "phase1") for k, v in load_splits(root).items()}
    rng = np.random.default_rng(0)
    cal_items = [splits["train"][i] for i in rng.choice(len(splits["train"]), 200, replace=False)]
    test_items = splits["test"]
    pp = Preprocess(size)
    cal = image_batch([p for p, _ in cal_items], pp)
    test = image_batch([p for p, _ in test_items], pp)
    labels = np.array([y for _, y in test_items])
    print(f"Students at {size} px, {len(test_items)} synthetic test images, epochs={epochs}")
    wide = cfg["quantize"]["int16x8"]
    print("| student | params | MACs (M) | flash (KB) | arena (KB) | host int8 latency (ms) | "
          "acc fp32 | acc int8 | top-1 agreement | 16x8 arena (KB) | 16x8 agreement |")
    print("|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    rows = []
    for spec in students:
        name, _, head = spec.partition(":")
        torch.manual_seed(0)
        model = SEMClassifier(name, len(classes), classes, pp.to_dict(),
                              head_features=int(head) if head else None,
                              loss={"name": "ce", "label_smoothing": 0.1},
                              optimizer={"lr": 3e-3, "weight_decay": 0.02, "warmup_epochs": 1},
                              max_epochs=max(1, epochs))
        with tempfile.TemporaryDirectory() as tmp_str:
            tmp = Path(tmp_str)
            if epochs:
                dm = SEMDataModule(splits["train"], {"val": splits["val"]}, size,
                                   augment=cfg["train"]["augment"], batch_size=64, num_workers=2,
                                   seed=0)
                result = fit(model, dm, trainer_cfg=cfg["trainer"], max_epochs=epochs,
                             patience=epochs, out_file=tmp / "m.ckpt", progress=False)
                prepare_for_int8(result, splits["val"], cal_items,  # finetune_real's steps
                                 equalize_images=cfg["finetune"]["int8_equalize_images"],
                                 weight_grid=cfg["finetune"]["int8_weight_grid"], seed=0)
                model = result.model
            delivery = deliver(model.eval().net, pp, classes, tmp / "artifacts", cal, test,
                               labels, DeliveryOptions.from_config(cfg["quantize"]))
            table = delivery.parity["table"]
            rows.append({"student": spec, "params": count_params(model.net),
                         "macs_M": delivery.edge["int8"]["macs"] / 1e6,
                         "flash_KB": delivery.edge["int8"]["flash_bytes"] / 1024,
                         "arena_KB": delivery.edge["int8"]["arena_bytes"] / 1024,
                         "latency_ms": delivery.host_latency()["int8"]["median_ms"],
                         "acc_fp32": table["reference"]["accuracy"] if epochs else None,
                         "acc_int8": table["tflite_int8"]["accuracy"] if epochs else None,
                         "agree": table["tflite_int8"]["top1_agreement"] if epochs else None,
                         "arena16_KB": delivery.edge["int16x8"]["arena_bytes"] / 1024
                         if wide else None,
                         "agree16": table["tflite_int16x8"]["top1_agreement"]
                         if epochs and wide else None})
        print(_fmt(rows[-1]), flush=True)
    student = cfg["model"]["student"]
    default = student["name"] + (f":{student['head_features']}" if student["head_features"] else "")
    for row in rows:
        if row["student"] == default:
            print(f"\nTargets for the default student ({default}):")
            for line in target_lines(row):
                print(f"- {line}")
    return rows


def target_lines(row: dict) -> list[str]:
    """The edge issue's targets, each with the measured value and met / MISSED."""
    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    lines = [f"int8 TFLite flash {row['flash_KB']:.0f} KB <= 600 KB: "
             f"{verdict(row['flash_KB'] <= 600)}",
             f"TFLM arena {row['arena_KB']:.0f} KB <= 300 KB: {verdict(row['arena_KB'] <= 300)}"]
    if row["agree"] is not None:
        drop = 100 * (row["acc_fp32"] - row["acc_int8"])
        lines += [f"int8 accuracy within 1 point of fp32 ({drop:+.1f} points drop): "
                  f"{verdict(drop <= 1.0)}",
                  f"top-1 agreement {100 * row['agree']:.1f} % >= 99 %: "
                  f"{verdict(row['agree'] >= 0.99)}"]
    if row["agree16"] is not None:
        lines += [f"16x8 model: top-1 agreement {100 * row['agree16']:.1f} % >= 99 %: "
                  f"{verdict(row['agree16'] >= 0.99)}, TFLM arena {row['arena16_KB']:.0f} KB "
                  f"<= 300 KB: {verdict(row['arena16_KB'] <= 300)}"]
    return lines


def _fmt(r: dict) -> str:
    def pct(v):
        return "—" if v is None else f"{100 * v:.1f} %"

    arena16 = "—" if r["arena16_KB"] is None else f"{r['arena16_KB']:.0f}"
    return (f"| {r['student']} | {r['params']:,} | {r['macs_M']:.1f} | {r['flash_KB']:.0f} | "
            f"{r['arena_KB']:.0f} | {r['latency_ms']:.2f} | {pct(r['acc_fp32'])} | "
            f"{pct(r['acc_int8'])} | {pct(r['agree'])} | {arena16} | {pct(r['agree16'])} |")


if __name__ == "__main__":
    main()
