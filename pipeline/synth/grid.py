"""Sample grids (one PNG per fine class and per tool profile) with small captions."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from pipeline.files import write_bytes


def _tile(paths_captions: list[tuple[Path, str]], cols: int = 4, cap_h: int = 12) -> np.ndarray:
    cells = []
    for p, cap in paths_captions:
        im = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
        bar = np.zeros((cap_h, im.shape[1]), np.uint8)
        cv2.putText(bar, cap[:24], (2, cap_h - 3), cv2.FONT_HERSHEY_SIMPLEX, 0.3, 255, 1,
                    cv2.LINE_AA)
        cells.append(np.vstack([im, bar]))
    while len(cells) % cols:
        cells.append(np.zeros_like(cells[0]))
    rows = [np.hstack(cells[i : i + cols]) for i in range(0, len(cells), cols)]
    return np.vstack(rows)


def make_grids(rows: list[dict], images_root: Path, out_dir: Path,
               per_cell: int = 16) -> list[Path]:
    """grid_class_<name>.png and grid_profile_<name>.png, written atomically."""
    images_root, out_dir = Path(images_root), Path(out_dir)
    written = []
    for key, caption in (("fine_class", "profile"), ("profile", "fine_class")):
        groups: dict[str, list[dict]] = {}
        for r in sorted(rows, key=lambda r: r["id"]):
            groups.setdefault(r[key], []).append(r)
        for name, grp in sorted(groups.items()):
            pick = grp[:: max(1, len(grp) // per_cell)][:per_cell]
            img = _tile([(images_root / r["path"], f"{r[caption]}/{r['family']}") for r in pick])
            path = out_dir / f"grid_{'class' if key == 'fine_class' else 'profile'}_{name}.png"
            write_bytes(path, cv2.imencode(".png", img)[1].tobytes())
            written.append(path)
    return written
