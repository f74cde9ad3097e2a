"""Read a user's folder of real images: class folders resolved through the taxonomy aliases.

Anything odd about a single file or folder is reported, not fatal: a user with one corrupt
file or a misspelt folder should get a clear list of what was used and what was not.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.data.images import IMAGE_SUFFIXES, BitDepth, ImageReadError, read_gray8_with_depth
from pipeline.errors import UserError
from pipeline.taxonomy import Taxonomy

# Folders that operating systems and tools create beside user data.
_IGNORED_DIRS = {"__MACOSX", "__pycache__"}


@dataclass
class ImportReport:
    root: str
    items: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    unknown_folders: dict[str, list[str]] = field(default_factory=dict)
    empty_classes: list[str] = field(default_factory=list)
    missing_classes: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    merged: dict[str, list[str]] = field(default_factory=dict)  # class -> its >= 2 folders
    # class folder -> images found in its subfolders (they count for the folder's class)
    nested: dict[str, int] = field(default_factory=dict)
    # folder (relative to root) -> how its images deeper than 8 bits were scaled:
    # [{"bits", "source", "images"}], one entry per distinct decision
    bit_depths: dict[str, list[dict]] = field(default_factory=dict)

    def summary(self) -> str:
        """A human-readable multi-line report."""
        lines = [f"Imported {len(self.items)} images from {self.root}"]
        lines += [f"  {cls:<14} {n:>6}" for cls, n in self.counts.items()]
        for cls, folders in self.merged.items():
            lines.append(f"Merged folders {folders} into class {cls}")
        if self.nested:
            where = ", ".join(f"{folder} ({n})" for folder, n in self.nested.items())
            lines.append(f"Counted {_images(sum(self.nested.values()))} in nested subfolders, "
                         f"each as its class folder's class: {where}")
        lines += self._bit_depth_lines()
        for folder, suggestions in self.unknown_folders.items():
            hint = f" (did you mean {', '.join(suggestions)}?)" if suggestions else ""
            lines.append(f"Ignored folder {folder!r}: no matching class{hint}")
        if self.empty_classes:
            lines.append(f"Class folders with no usable image: {', '.join(self.empty_classes)}")
        if self.missing_classes:
            lines.append(f"Classes with no folder: {', '.join(self.missing_classes)}")
        if self.skipped:
            lines.append(f"Skipped {len(self.skipped)} files:")
            lines += [f"  {path}: {reason}" for path, reason in self.skipped]
        return "\n".join(lines)

    def _bit_depth_lines(self) -> list[str]:
        if not self.bit_depths:
            return []
        lines = ["Images deeper than 8 bits, scaled by the bit depth of their folder "
                 "(or of their own metadata):"]
        for folder, entries in self.bit_depths.items():
            lines += [f"  {folder}: {e['bits']}-bit for {_images(e['images'])} ({e['source']})"
                      for e in entries]
        by_folder = {e["bits"] for es in self.bit_depths.values() for e in es
                     if e["source"].startswith("folder")}
        if len(by_folder) > 1:
            lines.append("  Folders differ in bit depth: images from one detector should "
                         "share one (a folder whose maximum stays <= 4095 reads as 12-bit); "
                         "PNG sBIT or TIFF MaxSampleValue metadata sets it per file")
        return lines

    def to_dict(self) -> dict:
        """JSON-serialisable (tuples become lists)."""
        return asdict(self)


def import_folder(
    root: Path,
    classes: Sequence[str],
    taxonomy: Taxonomy,
    *,
    min_size: int = 16,
    check_images: bool = True,
) -> ImportReport:
    """Collect <root>/<class folder>/**/<image> as (path, class) items.

    Folder names go through `taxonomy.resolve_folder`; folders meaning the same class are
    merged. check_images decodes every file so corrupt ones are skipped now, not mid-training.
    """
    root = _existing_dir(root)
    report = ImportReport(root=str(root))
    folders: dict[str, list[str]] = {}
    for entry in sorted(root.iterdir()):
        if _hidden(entry.name) or entry.name in _IGNORED_DIRS:
            continue
        if not entry.is_dir():
            reason = "not in a class folder" if _is_image(entry) else _unsupported(entry)
            report.skipped.append((str(entry), reason))
            continue
        cls = taxonomy.resolve_folder(entry.name, classes)
        if cls is None:
            report.unknown_folders[entry.name] = taxonomy.suggest(entry.name, classes)
            continue
        folders.setdefault(cls, []).append(entry.name)
        for path in _files(entry):
            depth = None
            if check_images:
                reason, depth = _problem(path, min_size)
            else:
                reason = _suffix_problem(path)
            if reason:
                report.skipped.append((str(path), reason))
                continue
            report.items.append((str(path), cls))
            if path.parent != entry:
                report.nested[entry.name] = report.nested.get(entry.name, 0) + 1
            if depth is not None:
                _count_depth(report.bit_depths, path.parent.relative_to(root).as_posix(), depth)

    report.items.sort()
    report.counts = {cls: 0 for cls in classes}
    for _, cls in report.items:
        report.counts[cls] += 1
    report.merged = {cls: names for cls, names in folders.items() if len(names) > 1}
    report.empty_classes = [c for c in classes if c in folders and not report.counts[c]]
    report.missing_classes = [c for c in classes if c not in folders]
    if not report.items:
        found = ""
        if report.unknown_folders:
            found += f"; folders {list(report.unknown_folders)} match no class"
        if report.skipped:
            found += f"; {len(report.skipped)} files skipped (e.g. {': '.join(report.skipped[0])})"
        raise UserError(
            f"no usable image in {root}: put images in one folder per class "
            f"(<root>/<class>/*.png) named like {list(classes)}{found}"
        )
    return report


def load_unlabelled(root: Path, *, min_size: int = 16) -> tuple[list[str], list[tuple[str, str]]]:
    """All images under root (recursive) → (usable paths sorted, skipped (path, reason))."""
    root = _existing_dir(root)
    usable, skipped = [], []
    for path in _files(root):
        reason, _ = _problem(path, min_size)
        if reason:
            skipped.append((str(path), reason))
        else:
            usable.append(str(path))
    return sorted(usable), skipped


def _existing_dir(root: Path) -> Path:
    root = Path(root).absolute()
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise UserError(f"image folder {root} {what}; point the data.real setting at a folder")
    return root


def _files(folder: Path) -> Iterator[Path]:
    """Non-hidden files below folder, recursively, in sorted order."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not _hidden(d) and d not in _IGNORED_DIRS)
        for name in sorted(filenames):
            if not _hidden(name):
                yield Path(dirpath) / name


def _problem(path: Path, min_size: int) -> tuple[str | None, BitDepth | None]:
    """(why a file cannot be used or None, the bit depth it is read with when deeper than 8)."""
    reason = _suffix_problem(path)
    if reason:
        return reason, None
    try:
        return None, read_gray8_with_depth(path, min_size=min_size)[1]
    except ImageReadError as exc:
        return exc.reason, None


def _images(n: int) -> str:
    return f"{n} image{'' if n == 1 else 's'}"


def _count_depth(bit_depths: dict[str, list[dict]], folder: str, depth: BitDepth) -> None:
    entries = bit_depths.setdefault(folder, [])
    for entry in entries:
        if (entry["bits"], entry["source"]) == (depth.bits, depth.source):
            entry["images"] += 1
            return
    entries.append({"bits": depth.bits, "source": depth.source, "images": 1})


def _suffix_problem(path: Path) -> str | None:
    return None if _is_image(path) else _unsupported(path)


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _unsupported(path: Path) -> str:
    suffix = path.suffix or "(no suffix)"
    return f"unsupported file type {suffix}; use one of {' '.join(IMAGE_SUFFIXES)}"


def _hidden(name: str) -> bool:
    """.DS_Store, ._AppleDouble files, .git and the like."""
    return name.startswith(".")
