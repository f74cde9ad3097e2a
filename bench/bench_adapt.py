"""Unlabelled-image adaptation of a trained checkpoint, scored on a labelled real folder.

Usage (from the repo root, after `dvc repro distill_student`):
    python bench/bench_adapt.py ../shared/real/phase3_train ../shared/real/phase3_unlabeled \\
        --taxonomy phase1 --models models/teacher/model.ckpt models/student/model.ckpt

For each checkpoint: accuracy, macro-F1 and defect recall on the labelled folder (its class
folders mapped to `--taxonomy`, as `python -m pipeline evaluate-folder` maps them) as
trained, after `finetune.bn_adapt` (pipeline.finetune.reestimate_batchnorm on the unlabelled
folder) and after `finetune.source_free` (pipeline.source_free, SHOT, with the params.yaml
settings; `--set KEY=VALUE` overrides one of them, e.g. `--set epochs=5`). No label of the
labelled folder is used for anything but scoring.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import find_root, load_params  # noqa: E402
from pipeline.data.importer import load_unlabelled  # noqa: E402
from pipeline.evaluate.folder import evaluate_folder  # noqa: E402
from pipeline.finetune import reestimate_batchnorm  # noqa: E402
from pipeline.models.classifier import load_classifier  # noqa: E402
from pipeline.source_free import SourceFreeOptions, adapt_source_free  # noqa: E402
from pipeline.taxonomy import Taxonomy  # noqa: E402
from pipeline.training import replace_weights  # noqa: E402

ADAPTATIONS = {
    "bn_adapt": lambda model, images, batch_size: reestimate_batchnorm(
        model, images, batch_size=batch_size),
    "source_free": adapt_source_free,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("labelled", help="<folder>/<class>/<images>, scored only")
    parser.add_argument("unlabeled", help="unlabelled real images the adaptation sees")
    parser.add_argument("--taxonomy", default="phase1", help="phase whose classes score it")
    parser.add_argument("--models", nargs="+", default=["models/teacher/model.ckpt",
                                                         "models/student/model.ckpt"])
    parser.add_argument("--adaptations", nargs="+", default=list(ADAPTATIONS),
                        choices=list(ADAPTATIONS))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a finetune.source_free key for this run")
    parser.add_argument("--seed", type=int, help="the adaptation's seed (default finetune.seed)")
    opts = parser.parse_args()
    root = find_root()
    params = load_params(root)
    taxonomy = Taxonomy.from_config(params["taxonomy"])
    ft = params["finetune"]
    overrides = {k: yaml.safe_load(v) for k, v in (kv.partition("=")[::2] for kv in opts.set)}
    unknown = sorted(set(overrides) - set(ft["source_free"]))
    if unknown:
        parser.error(f"--set {unknown}: not finetune.source_free keys; use one of "
                     f"{sorted(ft['source_free'])} (the seed is --seed)")
    source_free = {**ft["source_free"], **overrides}
    settings = {"bn_adapt": ft["bn_adapt"]["batch_size"],
                "source_free": SourceFreeOptions.from_config(source_free, ft["seed"] if opts.seed is None
                                                             else opts.seed,
                                                             params["train"]["augment"])}
    phase = taxonomy.phase(opts.taxonomy)
    unlabeled, _ = load_unlabelled(Path(opts.unlabeled))
    print(f"{opts.labelled} scored in {opts.taxonomy} classes; {len(unlabeled)} unlabelled "
          f"images from {opts.unlabeled}; source_free: {settings['source_free']}\n")
    print("| model | adaptation | accuracy | macro-F1 | defect recall |\n|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as work:
        for model_path in opts.models:
            for label in ["none", *opts.adaptations]:
                path = Path(model_path)
                if label != "none":
                    path = Path(work) / f"{path.parent.name}_{label}.ckpt"
                    path.write_bytes(Path(model_path).read_bytes())
                    model = load_classifier(path)
                    ADAPTATIONS[label](model, unlabeled, settings[label])
                    replace_weights(model, path)
                m = evaluate_folder(path, opts.labelled, taxonomy=taxonomy,
                                    classes=list(phase.classes), out_dir=Path(work) / label,
                                    clean_classes=phase.clean_classes)
                print(f"| {model_path} | {label} | {m['accuracy']:.1%} | {m['macro_f1']:.3f} | "
                      f"{m.get('defect_recall', float('nan')):.1%} |", flush=True)

if __name__ == "__main__":
    main()
