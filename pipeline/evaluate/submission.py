"""The organisers' submission format: image_name,predicted_class, one row per image.

image_name is the image's path relative to the folder that was predicted (posix separators):
the bare file name of a recursive listing would give two images of the same name in
different subfolders the same row name.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pipeline.files import write_csv

COLUMNS = ["image_name", "predicted_class"]


def submission_rows(folder: str | Path, paths: Sequence[str | Path],
                    predicted: Sequence[str]) -> list[dict]:
    """Rows for images under `folder` (a single image: its own name) and their classes."""
    folder = Path(folder).absolute()
    rows = []
    for path, cls in zip(paths, predicted, strict=True):
        path = Path(path).absolute()
        name = path.name if folder == path or folder not in path.parents \
            else path.relative_to(folder).as_posix()
        rows.append({"image_name": name, "predicted_class": cls})
    return rows


def write_submission(path: str | Path, rows: list[dict]) -> Path:
    write_csv(path, rows, COLUMNS)
    return Path(path)
