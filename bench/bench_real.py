"""k-fold benchmark of training recipes on a labelled real folder: the number to steer by.

Usage (from the repo root, after `dvc repro distill_student`, which trains the synthetic
teacher and student that recipes start from):
    python bench/bench_real.py ../shared/real/phase3_train --taxonomy phase3
    python bench/bench_real.py DIR --taxonomy phase3 --folds 5 --repeats 1 \\
        --recipes baseline matching --group appearance --unlabeled ../shared/real/phase3_unlabeled

Each fold's images are the test set; the other folds are split into train/val exactly as
finetune_real splits a real folder, and every recipe runs the library code the stage runs
(pipeline.recipes.train_phase_model, pipeline.export.deliver). Printed per recipe: mean ±
standard deviation over folds of accuracy and macro-F1 for the teacher (and with dihedral
test-time augmentation), the fp32 student and the delivered int8 TFLite student, plus flash,
arena and wall time. Results go to --work/results.json as they arrive; a rerun skips what
is there (delete the file to start over), so a long run can be resumed.

Recipes are named sets of config overrides (RECIPES below); teacher-only recipes train and
score the teachers alone. Unlabelled images that are near-duplicates of a test fold's images
are left out of that fold's transfer set.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import find_root, load_params, with_overrides  # noqa: E402
from pipeline.data.folds import GROUPINGS, appearance_groups, grouped_folds  # noqa: E402
from pipeline.data.images import read_gray8  # noqa: E402
from pipeline.data.importer import load_unlabelled  # noqa: E402
from pipeline.data.real import group_near_duplicates, load_real_folder, split_real  # noqa: E402
from pipeline.data.split import phase_items  # noqa: E402
from pipeline.evaluate.metrics import classification_metrics  # noqa: E402
from pipeline.export.deliver import (  # noqa: E402
    DeliveryOptions,
    deliver,
    image_batch,
    pick_samples,
)
from pipeline.files import write_json  # noqa: E402
from pipeline.matching import Teacher, teacher_logits  # noqa: E402
from pipeline.models.features import image_features  # noqa: E402
from pipeline.models.preprocess import Preprocess  # noqa: E402
from pipeline.models.surgery import head_row_sources  # noqa: E402
from pipeline.recipes import PhaseData, RecipeOptions, train_phase_model, train_teacher  # noqa: E402
from pipeline.stages.common import load_splits  # noqa: E402
from pipeline.taxonomy import Taxonomy, clean_classes  # noqa: E402
from pipeline.training import predict_probs  # noqa: E402

# Every student recipe pins its start and its matching schedule, so a change of default in
# conf/ does not change what a recipe name (its rows in results.json and BENCHMARKS.md) means.
STUDENT, SCRATCH = "finetune.init=student", "finetune.init=scratch"
EPOCHS_40, EPOCHS_80, EPOCHS_120 = (f"finetune.matching.epochs={n}" for n in (40, 80, 120))
ENSEMBLE = "finetune.teachers=[synthetic,efficientnet_lite1,efficientnet_lite2]"

# name -> (config overrides, whether a student is trained; False scores the teachers alone)
RECIPES: dict[str, tuple[list[str], bool]] = {
    "baseline": (["finetune.recipe=finetune", STUDENT], True),
    "teacher_synthetic": (["finetune.teachers=[synthetic]"], False),
    "teacher_lite0": (["finetune.teachers=[efficientnet_lite0]"], False),
    "teacher_lite1": (["finetune.teachers=[efficientnet_lite1]"], False),
    "teacher_lite2": (["finetune.teachers=[efficientnet_lite2]"], False),
    "ensemble": ([ENSEMBLE], False),
    "matching": ([STUDENT, EPOCHS_40], True),
    "matching_ensemble": ([ENSEMBLE, STUDENT, EPOCHS_40], True),
    # The synthetic stages' worth to the student: the same teacher and transfer set, the
    # student started from scratch instead of from the synthetic-distilled one.
    "matching_scratch": ([SCRATCH, EPOCHS_40], True),
    # The student sweep (issue 20): other students, from scratch (none has a synthetic
    # checkpoint), the same teacher and transfer set.
    "matching_mcu_irnet": ([SCRATCH, EPOCHS_40, "model.student.name=mcu_irnet"], True),
    # Resolution against width at about edge_cnn's cost: edge_cnn at 96 px (11 M MACs), and
    # edge_cnn_wide at 96 px (19 M MACs, as many as edge_cnn at 128).
    "matching_edge_cnn_96": ([SCRATCH, EPOCHS_40, "model.student.image_size=96"], True),
    "matching_edge_cnn_wide_96": ([SCRATCH, EPOCHS_40, "model.student.name=edge_cnn_wide",
                                   "model.student.image_size=96"], True),
    # Patience (Beyer et al. 2022): 3x the epochs, so 3x the teacher views.
    "matching_long": ([STUDENT, EPOCHS_120], True),
    "matching_scratch_80": ([SCRATCH, EPOCHS_80], True),
    "matching_scratch_long": ([SCRATCH, EPOCHS_120], True),
    # Teachers fed the 128 px images upsampled: ImageNet features at a scale nearer their own.
    "teacher_synthetic_192": (["finetune.teachers=[synthetic]", "finetune.teacher.image_size=192"],
                              False),
    "teacher_lite0_192": (["finetune.teachers=[efficientnet_lite0]",
                           "finetune.teacher.image_size=192"], False),
    "matching_nosynth": (["finetune.teachers=[efficientnet_lite0]", SCRATCH, EPOCHS_40,
                          "finetune.matching.synthetic_images=0"], True),
}

# The teachers' input size in conf/finetune (the real images are 128 px).
TEACHER_IMAGE_SIZE = 128
# Input size of the features that cluster images into appearance groups: fixed, so the folds
# stay the same whatever student a run configures.
APPEARANCE_IMAGE_SIZE = 128


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", help="labelled real images: <folder>/<class>/<images>")
    parser.add_argument("--taxonomy", default="phase3", help="phase whose classes label it")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--recipes", nargs="*", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--group", choices=GROUPINGS, default="near-dup")
    parser.add_argument("--clusters", type=int, default=20, help="k-means clusters (appearance)")
    parser.add_argument("--only-folds", nargs="*", type=int, default=None, metavar="K",
                        help="run these folds only (a pilot); the table covers what is done")
    parser.add_argument("--unlabeled", help="unlabelled real images for the transfer set")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides applied to every recipe")
    parser.add_argument("--work", default="/tmp/bench_real", help="models, caches, results")
    opts = parser.parse_args()
    bench(opts)


def bench(opts: argparse.Namespace) -> None:
    root = find_root()
    work = Path(opts.work)
    results_file = work / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    base = load_params(root, opts.set)
    taxonomy = Taxonomy.from_config(base["taxonomy"])
    classes = list(taxonomy.phase(opts.taxonomy).classes)
    found, _ = load_real_folder(opts.folder, classes, taxonomy, base["data"]["real"]["min_size"])
    items = [(p, classes.index(c)) for p, c in found]
    ft = base["finetune"]
    groups, hashes = group_near_duplicates([p for p, _ in items], ft["near_dup_max_distance"])
    if opts.group == "appearance":
        features = image_features(image_batch([p for p, _ in items],
                                              Preprocess(APPEARANCE_IMAGE_SIZE)))
        groups = appearance_groups(features, groups, opts.clusters, ft["seed"])
    unlabeled = load_unlabelled(Path(opts.unlabeled))[0] if opts.unlabeled else []
    unlabeled_hashes = group_near_duplicates(unlabeled, 0)[1] if unlabeled else []
    splits = load_splits(root)
    synthetic = {k: phase_items(splits[k], root, taxonomy, opts.taxonomy)
                 for k in ("train", "val")}
    print(f"{opts.folder}: {len(items)} images, {len(set(groups))} {opts.group} groups, "
          f"{opts.folds} folds x {opts.repeats} repeats", flush=True)
    for repeat in range(opts.repeats):
        folds = grouped_folds([y for _, y in items], groups, opts.folds, ft["seed"] + repeat)
        for k, test_idx in enumerate(folds):
            if opts.only_folds is not None and k not in opts.only_folds:
                continue
            test = [items[i] for i in test_idx]
            rest = [items[i] for i in range(len(items)) if i not in set(test_idx.tolist())]
            train, val, _ = split_real([(p, classes[y]) for p, y in rest], classes,
                                       val_fraction=ft["val_fraction"], seed=ft["seed"],
                                       max_distance=ft["near_dup_max_distance"])
            test_hashes = [hashes[i] for i in test_idx]
            data = PhaseData(train, val, True,
                             _away_from(unlabeled, unlabeled_hashes, test_hashes,
                                        ft["near_dup_max_distance"]),
                             synthetic["train"], synthetic["val"])
            fold_dir = work / opts.group / f"r{repeat}_f{k}"
            for name in opts.recipes:
                key = f"{opts.group}|{repeat}|{k}|{name}"
                if key in results:
                    continue
                results[key] = run_recipe(root, base, name, data, test, classes, fold_dir,
                                          work / "cache")
                write_json(results_file, results)
                print(key, json.dumps({m: round(v["accuracy"], 4) for m, v in
                                       results[key]["scores"].items()}), flush=True)
    print_table(results, opts.group, opts.recipes)


def run_recipe(root: Path, base: dict, name: str, data: PhaseData, test, classes,
               fold_dir: Path, cache: Path) -> dict:
    """One recipe on one fold. `base`: the params read once at the start (with --set), so
    editing params.yaml during a long run changes nothing."""
    overrides, with_student = RECIPES[name]
    cfg = with_overrides(base, overrides)
    taxonomy = Taxonomy.from_config(cfg["taxonomy"])
    opts = RecipeOptions.from_config(cfg, root, head_row_sources(
        taxonomy, cfg["train"]["phase"], _phase_of(cfg, classes)))
    start = time.perf_counter()
    teachers, teacher_seconds = {}, 0.0
    uses_teachers = opts.recipe == "matching" or not with_student
    for teacher in opts.teachers if uses_teachers else ():
        # Shared by the fold's recipes that train the same teacher at the same input size.
        ckpt = fold_dir / "teachers" / _teacher_file(teacher, opts.teacher_image_size)
        if not ckpt.is_file():
            teacher_seconds += train_teacher(teacher, data, classes, opts, ckpt).seconds
        teachers[teacher] = ckpt
    labels = np.array([y for _, y in test])
    scores, edge = {}, {}
    clean = clean_classes(classes)
    if uses_teachers:
        for tta in (False, True):
            t = Teacher.from_checkpoints(list(teachers.values()), dihedral=tta)
            probs = np.exp(teacher_logits(t, test, t.image_size))
            scores["teacher_tta" if tta else "teacher"] = _scores(labels, probs, classes, clean)
    if with_student:
        out = fold_dir / name
        trained = train_phase_model(data, classes, opts, out, cache_dir=cache,
                                    trained_teachers=teachers)
        model = trained.result.model
        scores["student_fp32"] = _scores(labels, predict_probs(model, test), classes, clean)
        q = cfg["quantize"]
        cal, parity = pick_samples(data.train, data.synthetic_train + data.synthetic_val, test, q)
        delivery = deliver(model.net, model.pp, classes, out / "artifacts",
                           image_batch([p for p, _ in cal], model.pp),
                           image_batch([p for p, _ in parity], model.pp), [y for _, y in parity],
                           DeliveryOptions.from_config(q))
        probs = delivery.predictor("int8").predict([read_gray8(Path(p)) for p, _ in test])
        scores["student_int8"] = _scores(labels, probs, classes, clean)
        edge = {k: delivery.edge["int8"][k] for k in ("flash_bytes", "arena_bytes",
                                                       "m7_latency_ms_estimate")}
    return {"scores": scores, "edge": edge, "seconds": round(time.perf_counter() - start, 1),
            "teacher_seconds": round(teacher_seconds, 1),
            "train": len(data.train), "val": len(data.val), "test": len(test),
            "unlabeled": len(data.unlabeled)}


def _teacher_file(name: str, image_size: int) -> str:
    # The default size keeps the name that earlier runs' work folders hold.
    return f"{name}.ckpt" if image_size == TEACHER_IMAGE_SIZE else f"{name}_{image_size}px.ckpt"


def _scores(labels, probs, classes, clean) -> dict:
    m = classification_metrics(labels, probs.argmax(1), classes, probs, clean_classes=clean)
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}


def _away_from(paths, hashes, test_hashes, max_distance) -> list[str]:
    """Paths whose image is no near-duplicate (any orientation) of a test image."""
    test = np.array([int(h, 16) for hs in test_hashes for h in hs], dtype=np.uint64)
    keep = []
    for path, hs in zip(paths, hashes, strict=True):
        mine = np.uint64(int(hs[0], 16))
        distance = np.array([bin(int(v)).count("1") for v in np.bitwise_xor(test, mine)])
        if distance.size == 0 or distance.min() > max_distance:
            keep.append(path)
    return keep


def _phase_of(cfg: dict, classes: list[str]) -> str:
    return next(p for p, spec in cfg["taxonomy"]["phases"].items()
                if list(spec["classes"]) == classes)


def print_table(results: dict, group: str, recipes: list[str]) -> None:
    print(f"\n| recipe ({group} folds) | model | accuracy | macro-F1 | flash | arena | "
          "minutes / fold (teachers) |")
    print("|---|---|---|---|---|---|---|")
    for name in recipes:
        runs = [v for k, v in results.items() if k.startswith(f"{group}|")
                and k.split("|")[3] == name]
        if not runs:
            continue
        for model in ("teacher", "teacher_tta", "student_fp32", "student_int8"):
            got = [r["scores"][model] for r in runs if model in r["scores"]]
            if not got:
                continue
            acc = np.array([g["accuracy"] for g in got]) * 100
            f1 = np.array([g["macro_f1"] for g in got])
            edge = runs[0]["edge"] if model == "student_int8" else {}
            flash = f"{edge['flash_bytes'] / 1024:.0f} KB" if edge else ""
            arena = f"{edge['arena_bytes'] / 1024:.0f} KB" if edge else ""
            minutes = np.mean([r["seconds"] for r in runs]) / 60
            teacher_min = np.mean([r.get("teacher_seconds", 0) for r in runs]) / 60
            print(f"| {name} | {model} | {acc.mean():.1f} ± {acc.std(ddof=1) if len(acc) > 1 else 0:.1f} % "
                  f"(n={len(acc)}) | {f1.mean():.3f} ± {f1.std(ddof=1) if len(f1) > 1 else 0:.3f} | "
                  f"{flash} | {arena} | {minutes:.1f} ({teacher_min:.1f}) |")


if __name__ == "__main__":
    main()
