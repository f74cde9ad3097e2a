"""Command line: `python -m pipeline <command> [args]`.

Stages (run by DVC; `key=value` overrides apply on top of params.yaml for debugging):
  synthesize, sim_to_real, split, train_teacher, distill_student
  finetune_real PHASE, quantize PHASE, evaluate PHASE
Tools:
  compose [hydra overrides]   write params.yaml from conf/ (what `dvc exp run -S` does)
  check-params                exit 1 when params.yaml differs from what conf/ composes to
  preflight                   exit 2 when params.yaml cannot run here (missing folders,
                              unknown backbones, missing weights, unreachable tracking
                              server); `make repro` runs it before `dvc repro`
  import-folder DIR [--phase P] [--json OUT]
                              report how a labelled folder of images would be imported
                              (classes through the alias table, skipped files and why)
  predict MODEL IMAGES [--out CSV] [--format default|submission] [--threshold T]
                              classify a folder (or one image) with a .ckpt/.onnx/.tflite model
  explain MODEL.ckpt IMAGES [--out DIR]
                              saliency overlays (HiResCAM: where the model looks) for images
  domain-gap SYNTH_DIR REAL_DIR [--taxonomy PHASE] [--out DIR] [--per-class N]
                              how far synthetic images are from real ones (labelled by class
                              folders or not): feature Fréchet distance, real-vs-synthetic
                              classifier accuracy, contrast/sharpness/noise side by side
  evaluate-folder MODEL LABELLED_DIR [--taxonomy PHASE] [--out DIR] [--map CLS=TARGET ...]
                              metrics, predictions and confusion matrix on a labelled folder
"""

from __future__ import annotations

import importlib
import logging
import signal
import sys
from pathlib import Path

from pipeline.errors import UserError

STAGES = ("synthesize", "sim_to_real", "split", "train_teacher", "distill_student")
PHASE_STAGES = ("finetune_real", "quantize", "evaluate")


def _compose(args: list[str]) -> int:
    from pipeline.config import find_root, write_params

    path = write_params(find_root(), args)
    print(f"wrote {path}")
    return 0


def _check_params(args: list[str]) -> int:
    from pipeline.config import PARAMS_FILE, compose, find_root

    root = find_root()
    expected = compose(root, args)
    current = (root / PARAMS_FILE).read_text(encoding="utf-8") if (root / PARAMS_FILE).exists() else ""
    if current != expected:
        print(f"{PARAMS_FILE} differs from conf/; run `python -m pipeline compose` and commit it")
        return 1
    print(f"{PARAMS_FILE} matches conf/")
    return 0


def _preflight(args: list[str]) -> int:
    from pipeline.config import find_root, load_params
    from pipeline.preflight import problems

    root = find_root()
    found = problems(load_params(root, args), root)
    if found:
        raise UserError("params.yaml cannot run on this machine (nothing was run or "
                        "changed):\n  - " + "\n  - ".join(found))
    print("preflight: params.yaml can run here")
    return 0


def _explain(args: list[str]) -> int:
    import argparse

    import cv2

    from pipeline.data.images import read_gray8
    from pipeline.data.importer import load_unlabelled
    from pipeline.evaluate.saliency import explain_images, overlay
    from pipeline.models.classifier import load_classifier

    parser = argparse.ArgumentParser(prog="python -m pipeline explain")
    parser.add_argument("model", help="a .ckpt (the maps need the torch model)")
    parser.add_argument("images", help="a folder of images (searched recursively) or one image")
    parser.add_argument("--out", default="reports/explain", help="folder for the overlays")
    opts = parser.parse_args(args)
    if not opts.model.endswith(".ckpt"):
        raise UserError(f"{opts.model}: explain needs the .ckpt of a delivered model "
                        "(models/<phase>/model.ckpt): the maps need its gradients")
    model = load_classifier(Path(opts.model))
    source = Path(opts.images)
    paths = [str(source)] if source.is_file() else load_unlabelled(source)[0]
    shown, cams, preds = explain_images(model, [read_gray8(Path(p)) for p in paths])
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    names = list(model.hparams.class_names)
    for path, img, cam, pred in zip(paths, shown, cams, preds, strict=True):
        target = out / f"{Path(path).stem}_{names[int(pred)]}.png"
        cv2.imwrite(str(target), overlay(img, cam))
    print(f"wrote {len(paths)} overlays to {out}")
    return 0


def _domain_gap(args: list[str]) -> int:
    import argparse

    from pipeline.config import find_root, load_params
    from pipeline.data.importer import load_unlabelled
    from pipeline.data.style import METHODS, style_from_config
    from pipeline.evaluate.domain_gap import gap_table, measure_folders
    from pipeline.taxonomy import Taxonomy

    parser = argparse.ArgumentParser(prog="python -m pipeline domain-gap")
    parser.add_argument("synthetic", help="a synthesize output folder (labels.csv, images/)")
    parser.add_argument("real", help="real images: <dir>/<class>/<images>, or unlabelled")
    parser.add_argument("--taxonomy", default="phase3", help="phase whose classes compare")
    parser.add_argument("--out", default="reports/data/domain_gap",
                        help="folder for domain_gap.json and the statistics figure")
    parser.add_argument("--per-class", type=int, default=60,
                        help="synthetic images drawn per fine class (default 60)")
    parser.add_argument("--style", choices=METHODS,
                        help="restyle every synthetic image first (train.style), toward "
                             "--style-from")
    parser.add_argument("--style-from", metavar="DIR",
                        help="unlabelled real images the style comes from (keep them apart "
                             "from REAL_DIR, or the meter sees its own references)")
    parser.add_argument("--fda-beta", type=float, default=0.05, help="train.style.fda_beta")
    opts = parser.parse_args(args)
    if bool(opts.style) != bool(opts.style_from):
        parser.error("--style and --style-from go together")
    style = style_from_config(
        {"enabled": True, "method": opts.style, "p": 1.0, "fda_beta": opts.fda_beta,
         "references": 256}, load_unlabelled(Path(opts.style_from))[0], 128, 0
    ) if opts.style else None
    taxonomy = Taxonomy.from_config(load_params(find_root())["taxonomy"])
    rows = measure_folders(Path(opts.synthetic), Path(opts.real), taxonomy, opts.taxonomy,
                           Path(opts.out), per_class=opts.per_class, style=style)
    print(gap_table(rows))
    print(f"-> {opts.out}/domain_gap.json")
    return 0


def _import_folder(args: list[str]) -> int:
    import argparse

    from pipeline.config import find_root, load_params
    from pipeline.data.importer import import_folder
    from pipeline.files import write_json
    from pipeline.taxonomy import Taxonomy

    parser = argparse.ArgumentParser(prog="python -m pipeline import-folder")
    parser.add_argument("folder")
    parser.add_argument("--phase", default="phase1")
    parser.add_argument("--json", help="also write the report as JSON here")
    opts = parser.parse_args(args)
    taxonomy = Taxonomy.from_config(load_params(find_root())["taxonomy"])
    classes = taxonomy.phase(opts.phase).classes
    report = import_folder(Path(opts.folder), classes, taxonomy)
    print(report.summary())
    if opts.json:
        write_json(opts.json, report.to_dict())
    return 0


def _predict(args: list[str]) -> int:
    import argparse

    from pipeline.evaluate.folder import predict_folder

    parser = argparse.ArgumentParser(prog="python -m pipeline predict")
    parser.add_argument("model", help=".ckpt, .onnx or .tflite")
    parser.add_argument("images", help="a folder of images (searched recursively) or one image")
    parser.add_argument("--out", help="CSV to write (default: print to stdout)")
    parser.add_argument("--format", choices=("default", "submission"), default="default",
                        help="submission: the organisers' image_name,predicted_class")
    parser.add_argument("--threshold", default=None, metavar="T",
                        help="flag images below this confidence, a number in [0, 1] (default: "
                             "the threshold calibrated on validation data, from manifest.json)")
    opts = parser.parse_args(args)
    threshold = None
    if opts.threshold is not None:
        try:
            threshold = float(opts.threshold)
            valid = 0.0 <= threshold <= 1.0  # nan compares false, so it is refused too
        except ValueError:
            valid = False
        if not valid:
            raise UserError(f"--threshold {opts.threshold!r}: must be a number in [0, 1]")
    result = predict_folder(opts.model, opts.images, out_csv=Path(opts.out) if opts.out else None,
                            fmt=opts.format, threshold=threshold)
    if not opts.out:
        sys.stdout.write(result.csv_text())  # the same CSV as --out writes, header and quoting
    else:
        print(f"wrote {len(result.rows)} predictions to {opts.out}"
              + (f" ({len(result.skipped)} files skipped)" if result.skipped else ""))
    return 0


def _evaluate_folder(args: list[str]) -> int:
    import argparse

    from pipeline.config import find_root, load_params
    from pipeline.evaluate.folder import evaluate_folder
    from pipeline.taxonomy import Taxonomy

    parser = argparse.ArgumentParser(prog="python -m pipeline evaluate-folder")
    parser.add_argument("model", help=".ckpt, .onnx or .tflite")
    parser.add_argument("labelled_dir", help="<dir>/<class folder>/<images>")
    parser.add_argument("--taxonomy", default="phase1", help="phase whose classes label the folder")
    parser.add_argument("--out", default="reports/evaluate-folder")
    parser.add_argument("--map", nargs="*", default=[], metavar="MODEL_CLASS=TARGET_CLASS",
                        help="override how a model class is scored (e.g. clean=CLEAN_LAYER)")
    opts = parser.parse_args(args)
    overrides: dict[str, str] = {}
    for item in opts.map:
        model_class, sep, target = item.partition("=")
        if not (sep and model_class and target):
            raise UserError(f"--map {item!r}: expected MODEL_CLASS=TARGET_CLASS "
                            "(e.g. clean=CLEAN_LAYER)")
        if model_class in overrides:
            raise UserError(f"--map: model class {model_class!r} is mapped twice")
        overrides[model_class] = target
    taxonomy = Taxonomy.from_config(load_params(find_root())["taxonomy"])
    classes = taxonomy.phase(opts.taxonomy).classes
    metrics = evaluate_folder(opts.model, opts.labelled_dir, taxonomy=taxonomy, classes=classes,
                              out_dir=Path(opts.out), mapping_overrides=overrides or None,
                              clean_classes=[c for c in classes if "clean" in c.lower()])
    print(f"accuracy {metrics['accuracy']:.4f}  macro-F1 {metrics['macro_f1']:.4f}  "
          f"n={metrics['n']}  -> {opts.out}/metrics.json")
    return 0


def _stage(name: str, args: list[str]) -> int:
    from pipeline.config import find_root, load_params

    phase = None
    if name in PHASE_STAGES:
        if not args or "=" in args[0]:
            raise UserError(f"usage: python -m pipeline {name} PHASE [key=value ...]")
        phase, args = args[0], args[1:]
    from pipeline.files import remove_stale_temporaries
    from pipeline.layout import OUTPUT_ROOTS

    root = find_root()
    cfg = load_params(root, args)
    remove_stale_temporaries(root, OUTPUT_ROOTS)
    module = importlib.import_module(f"pipeline.stages.{name}")
    # A terminated stage (Ctrl-C, `kill`, a CI timeout) unwinds like a failed one: its
    # temporary files are removed and its MLflow run is marked FAILED.
    signal.signal(signal.SIGTERM, _terminated)
    if phase is None:
        module.run(cfg, root)
    else:
        module.run(cfg, root, phase)
    return 0


def _terminated(signum, frame) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    command, args = argv[0].replace("-", "_"), argv[1:]
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("lightning.pytorch").propagate = False  # it has its own handler
    try:
        if command == "compose":
            return _compose(args)
        if command == "check_params":
            return _check_params(args)
        if command == "preflight":
            return _preflight(args)
        if command == "predict":
            return _predict(args)
        if command == "evaluate_folder":
            return _evaluate_folder(args)
        if command == "import_folder":
            return _import_folder(args)
        if command == "domain_gap":
            return _domain_gap(args)
        if command == "explain":
            return _explain(args)
        if command in STAGES or command in PHASE_STAGES:
            return _stage(command, args)
        print(f"error: unknown command {argv[0]!r}; run `python -m pipeline --help`", file=sys.stderr)
        return 2
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
