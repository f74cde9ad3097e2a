"""A phase's real images: a user's folder through the importer, or the synthetic stand-in.

Real folders are split into train/val with near-duplicates (any flip or rotation) kept in one
split, because real sets collected from papers and the web often hold flipped copies.
When a phase has no real folder, the held-out tool profiles stand in (their `standin_split`
column from the split stage), and every result says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.data.hashing import near_duplicates, phash_dihedral
from pipeline.data.images import read_gray8
from pipeline.data.importer import import_folder
from pipeline.data.split import grouped_stratified_split, leakage_report, phase_items
from pipeline.errors import UserError
from pipeline.files import read_json, sha256_file
from pipeline.taxonomy import Taxonomy

Items = list[tuple[str, int]]
STANDIN = "stand-in: held-out synthetic tool profiles"


@dataclass(frozen=True)
class RealData:
    """What a phase's model was trained on, as recorded in its real_data.json: the real train
    and val items (empty for the stand-in) and the rest of the report."""

    train: Items = field(default_factory=list)
    val: Items = field(default_factory=list)
    report: dict = field(default_factory=dict)

    @property
    def is_real(self) -> bool:
        return self.report.get("source") == "real"


def image_records(items: Items, classes: Sequence[str]) -> list[dict]:
    """real_data.json's record of each image: {"path", "class", "sha256"}."""
    return [{"path": p, "class": classes[y], "sha256": sha256_file(p)} for p, y in items]


def read_real_data(path: Path, classes: Sequence[str]) -> RealData:
    """The RealData of a real_data.json (an empty one when the file does not exist)."""
    path = Path(path)
    if not path.is_file():
        return RealData()
    report = read_json(path)
    index = {c: i for i, c in enumerate(classes)}

    def items(key: str) -> Items:
        try:
            return [(r["path"], index[r["class"]]) for r in report.get(key, [])]
        except (KeyError, TypeError) as exc:
            raise UserError(f"{path}: {key} records need path and class in {list(classes)} "
                            f"({exc!r}); rerun finetune_real (dvc repro)") from exc

    return RealData(items("train_files"), items("val_files"), report)


def union_groups(n: int, pairs: Sequence[tuple[int, int]]) -> list[int]:
    """A group id per item 0..n-1, items joined by any chain of `pairs` sharing one."""
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        parent[find(a)] = find(b)
    return [find(i) for i in range(n)]


def group_near_duplicates(paths: Sequence[str], max_distance: int) -> tuple[list[int], list[list[str]]]:
    """A group id per image (near-duplicates under any flip/rotation share one) and the hashes."""
    hashes = [phash_dihedral(read_gray8(Path(p))) for p in paths]
    # Compare each image's canonical hash against all 8 orientations of every other image.
    canonical = [(str(i), h[0]) for i, h in enumerate(hashes)]
    oriented = [(str(i), v) for i, h in enumerate(hashes) for v in h]
    pairs = {(int(a), int(b)) for a, b, _ in near_duplicates(canonical, oriented, max_distance)
             if a != b}
    return union_groups(len(paths), sorted(pairs)), [[f"{v:016x}" for v in h] for h in hashes]


def load_real_folder(folder: str | Path, classes: Sequence[str], taxonomy: Taxonomy,
                     min_size: int = 16) -> tuple[list[tuple[str, str]], dict]:
    report = import_folder(Path(folder), classes, taxonomy, min_size=min_size)
    return report.items, report.to_dict()


def split_real(items: Sequence[tuple[str, str]], classes: Sequence[str], *, val_fraction: float,
               seed: int, max_distance: int) -> tuple[Items, Items, dict]:
    """Grouped, stratified train/val split of (path, class) items, checked for leakage."""
    groups, hashes = group_near_duplicates([p for p, _ in items], max_distance)
    rows = [{"id": p, "path": p, "cls": c, "group": g, "sha256": "", "phash": h}
            for (p, c), g, h in zip(items, groups, hashes, strict=True)]
    for row in rows:
        row["sha256"] = sha256_file(row["path"])
    parts = grouped_stratified_split(rows, val_fraction=val_fraction, test_fraction=0.0,
                                     seed=seed, group_key="group", stratify_key="cls",
                                     heldout_key=None)
    leakage = leakage_report({"train": parts["train"], "val": parts["val"]},
                             max_distance=max_distance, dihedral=True)
    if not leakage["ok"]:  # cannot happen when groups are respected; a bug if it does
        raise RuntimeError(f"real train/val leakage after grouping: {leakage['counts']}")
    index = {c: i for i, c in enumerate(classes)}
    train = [(r["path"], index[r["cls"]]) for r in parts["train"]]
    val = [(r["path"], index[r["cls"]]) for r in parts["val"]]
    report = {"near_duplicate_groups": len(rows) - len(set(groups)),
              "exact_within_splits": len(leakage.get("exact_within", [])),
              "train": len(train), "val": len(val)}
    return train, val, report


def labelled_split(folder: str | Path, classes: Sequence[str], taxonomy: Taxonomy, *,
                   min_size: int, val_fraction: float, seed: int, max_distance: int
                   ) -> tuple[Items, Items, dict]:
    """A labelled real folder imported and split into train/val (near-duplicates together),
    with the import and split reports; UserError when it cannot be trained on."""
    folder = str(Path(folder).expanduser())
    found, import_report = load_real_folder(folder, classes, taxonomy, min_size)
    index = {c: i for i, c in enumerate(classes)}
    require_trainable([(p, index[c]) for p, c in found], classes, folder)
    train, val, split_report = split_real(found, classes, val_fraction=val_fraction, seed=seed,
                                          max_distance=max_distance)
    if not val:
        raise UserError(f"{folder}: too few images for a validation split; add images or "
                        "raise finetune.val_fraction")
    return train, val, {"source": "real", "folder": folder, "import": import_report,
                        "split": split_report}


def standin_items(heldout_rows: Sequence[Mapping], role: str, root: Path, taxonomy: Taxonomy,
                  phase: str) -> Items:
    """Held-out-profile images of one stand-in role, labelled in the phase's taxonomy."""
    return phase_items([r for r in heldout_rows if r["standin_split"] == role], root, taxonomy,
                       phase)


def require_trainable(items: Items, classes: Sequence[str], folder: str) -> None:
    """Refuse (naming the problem) only when fine-tuning cannot make sense."""
    present = {classes[y] for _, y in items}
    if len(items) < 4 or len(present) < 2:
        raise UserError(
            f"real training folder {folder} has {len(items)} usable images in "
            f"{len(present)} classes; fine-tuning needs at least 4 images in 2 classes. "
            "Check the folder layout (<root>/<class>/<images>) and the report above"
        )
