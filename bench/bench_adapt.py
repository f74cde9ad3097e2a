"""Unlabelled-image adaptation of a trained checkpoint, scored on a labelled real folder.

Usage (from the repo root, after `dvc repro distill_student`):
    python bench/bench_adapt.py ../shared/real/phase3_train ../shared/real/phase3_unlabeled \\
        --taxonomy phase1 --models models/teacher/model.ckpt models/student/model.ckpt

For each checkpoint: accuracy, macro-F1 and defect recall on the labelled folder (its class
folders mapped to `--taxonomy`, as `python -m pipeline evaluate-folder` maps them) as
trained, and after `finetune.bn_adapt` (pipeline.finetune.reestimate_batchnorm on the
unlabelled folder). No label of the labelled folder is used for anything but scoring.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import find_root, load_params  # noqa: E402
from pipeline.data.importer import load_unlabelled  # noqa: E402
from pipeline.evaluate.folder import evaluate_folder  # noqa: E402
from pipeline.finetune import reestimate_batchnorm  # noqa: E402
from pipeline.models.classifier import load_classifier  # noqa: E402
from pipeline.taxonomy import Taxonomy  # noqa: E402
from pipeline.training import replace_weights  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("labelled", help="<folder>/<class>/<images>, scored only")
    parser.add_argument("unlabeled", help="unlabelled real images the adaptation sees")
    parser.add_argument("--taxonomy", default="phase1", help="phase whose classes score it")
    parser.add_argument("--models", nargs="+", default=["models/teacher/model.ckpt",
                                                         "models/student/model.ckpt"])
    parser.add_argument("--batch-size", type=int, default=32, help="finetune.bn_adapt.batch_size")
    opts = parser.parse_args()
    root = find_root()
    taxonomy = Taxonomy.from_config(load_params(root)["taxonomy"])
    phase = taxonomy.phase(opts.taxonomy)
    unlabeled, _ = load_unlabelled(Path(opts.unlabeled))
    print(f"{opts.labelled} scored in {opts.taxonomy} classes; {len(unlabeled)} unlabelled "
          f"images from {opts.unlabeled}\n")
    print("| model | adaptation | accuracy | macro-F1 | defect recall |\n|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as work:
        for model_path in opts.models:
            adapted = Path(work) / f"{Path(model_path).parent.name}_bn.ckpt"
            adapted.write_bytes(Path(model_path).read_bytes())
            model = load_classifier(adapted)
            reestimate_batchnorm(model, unlabeled, batch_size=opts.batch_size)
            replace_weights(model, adapted)
            for label, path in (("none", Path(model_path)), ("bn_adapt", adapted)):
                m = evaluate_folder(path, opts.labelled, taxonomy=taxonomy,
                                    classes=list(phase.classes), out_dir=Path(work) / label,
                                    clean_classes=phase.clean_classes)
                print(f"| {model_path} | {label} | {m['accuracy']:.1%} | {m['macro_f1']:.3f} | "
                      f"{m.get('defect_recall', float('nan')):.1%} |", flush=True)


if __name__ == "__main__":
    main()
