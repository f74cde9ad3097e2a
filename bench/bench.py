"""The benchmark `make bench` runs: every figure the issues ask for, printed as Markdown tables.

Usage (from the repo root, after `dvc repro`):
    python bench/bench.py                      # stage times, synth images/s, inference images/s
    python bench/bench.py --real ../shared/real/phase3_train --real-taxonomy phase3
    python bench/bench.py --pareto-epochs 8    # plus the student Pareto table (trains each one)

Sections:
1. Wall time per stage of the latest run of each stage (read back from MLflow).
2. Synthetic images/s at 128 px with 1 and 2 workers.
3. Inference images/s per delivered format and phase on this CPU (preprocessing included;
   torch and ONNX run batches of 64, TFLite runs batch 1 as on the board).
4. With --real: accuracy and macro-F1 of every format on a labelled real folder.
5. With --pareto-epochs (0 = sizes only): the student Pareto table of bench_students.py.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_students import STUDENTS, pareto  # noqa: E402
from bench_synth import run as synth_images_per_s  # noqa: E402
from stage_times import stage_times  # noqa: E402

from pipeline.config import find_root, load_params  # noqa: E402
from pipeline.data.images import read_gray8  # noqa: E402
from pipeline.evaluate.folder import evaluate_folder  # noqa: E402
from pipeline.evaluate.inference import host_name, load_predictor  # noqa: E402
from pipeline.stages.common import load_splits  # noqa: E402
from pipeline.taxonomy import Taxonomy, clean_classes  # noqa: E402

# The delivered files of a phase, relative to the repo root ({p} = phase).
FORMATS = {"torch fp32": "models/{p}/model.ckpt", "ONNX fp32": "artifacts/{p}/model.onnx",
           "ONNX int8": "artifacts/{p}/model_int8.onnx",
           "TFLite float": "artifacts/{p}/model_float.tflite",
           "TFLite int8": "artifacts/{p}/model_int8.tflite"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=256, help="test images for images/s")
    parser.add_argument("--synth-per-class", type=int, default=20,
                        help="images per class for the synthesis throughput run")
    parser.add_argument("--real", type=Path, help="labelled real folder (<class>/<image>)")
    parser.add_argument("--real-taxonomy", default="phase3",
                        help="phase whose classes label --real (default phase3)")
    parser.add_argument("--pareto-epochs", type=int, default=None,
                        help="add the student Pareto table, training each for N epochs")
    opts = parser.parse_args()
    root = find_root()
    cfg = load_params(root)
    phases = list(cfg["finetune"]["phases"])
    print(f"Host: {host_name()}; experiment: {cfg['experiment_name']}\n")

    print_stage_times(root)
    print_synth(opts.synth_per_class)
    print_inference(root, phases, opts.images)
    if opts.real:
        print_real(root, cfg, phases, opts.real, opts.real_taxonomy)
    if opts.pareto_epochs is not None:
        print("\n## Student Pareto table\n")
        pareto(root, STUDENTS, opts.pareto_epochs)


def print_stage_times(root: Path) -> None:
    print("## Wall time per stage (latest run of each, from MLflow)\n")
    rows = stage_times(root)
    if not rows:
        print("No stage runs in MLflow yet: run `dvc repro` first.\n")
        return
    print("| stage | wall time (s) | finished |\n|---|---|---|")
    for name, seconds, end in rows:
        print(f"| {name} | {seconds:.0f} | {end} |")
    print(f"| total | {sum(r[1] for r in rows):.0f} | |\n", flush=True)


def print_synth(per_class: int) -> None:
    print("## Synthesis throughput (128 px, supersample 2)\n")
    print("| workers | images/s |\n|---|---|")
    for workers in (1, 2):
        print(f"| {workers} | {synth_images_per_s(per_class, workers):.1f} |", flush=True)
    print()


def print_inference(root: Path, phases: list[str], n: int) -> None:
    """images/s of `predict` (decode excluded, preprocessing included) per format."""
    test = [root / r["path"] for r in load_splits(root)["test"]][:n]
    images = [read_gray8(p) for p in test]
    print(f"## Inference on this CPU ({len(images)} synthetic test images)\n")
    print("| phase | format | images/s | ms/image | file size (KB) |\n|---|---|---|---|---|")
    for phase, fmt, path in delivered(root, phases):
        if not path.is_file():
            print(f"| {phase} | {fmt} | missing: {path.relative_to(root)} | | |")
            continue
        predictor = load_predictor(path)
        predictor.predict(images[:4])  # warm-up: sessions, allocations
        start = time.perf_counter()
        predictor.predict(images)
        seconds = time.perf_counter() - start
        print(f"| {phase} | {fmt} | {len(images) / seconds:.0f} | "
              f"{1e3 * seconds / len(images):.2f} | {path.stat().st_size / 1024:.0f} |",
              flush=True)
    print()


def delivered(root: Path, phases: list[str]):
    """(phase, format, path) of every delivered file of `phases`, existing or not."""
    for phase in phases:
        for fmt, pattern in FORMATS.items():
            yield phase, fmt, root / pattern.format(p=phase)


def print_real(root: Path, cfg: dict, phases: list[str], folder: Path, taxonomy_name: str
               ) -> None:
    taxonomy = Taxonomy.from_config(cfg["taxonomy"])
    classes = taxonomy.phase(taxonomy_name).classes
    print(f"## Real folder {folder} (labelled with the {taxonomy_name} classes)\n")
    print("| phase model | format | accuracy | macro-F1 | images |\n|---|---|---|---|---|")
    for phase, fmt, path in delivered(root, phases):
        if not path.is_file():
            continue
        with tempfile.TemporaryDirectory() as tmp:
            m = evaluate_folder(path, folder, taxonomy=taxonomy, classes=classes,
                                out_dir=Path(tmp),
                                clean_classes=clean_classes(classes))
        print(f"| {phase} | {fmt} | {100 * m['accuracy']:.1f} % | {m['macro_f1']:.3f} | "
              f"{m['n']} |", flush=True)
    print()


if __name__ == "__main__":
    main()
