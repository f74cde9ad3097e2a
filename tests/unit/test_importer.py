"""import_folder / load_unlabelled on a messy user folder."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from pipeline.data.importer import import_folder, load_unlabelled
from pipeline.errors import UserError
from pipeline.taxonomy import load_taxonomy_file

REPO = Path(__file__).resolve().parents[2]
TAX = load_taxonomy_file(REPO / "conf/taxonomy/default.yaml")
PHASE1 = TAX.phase("phase1").classes


def _png(path: Path, value: int = 100, size: int = 32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)
    return path


@pytest.fixture
def messy(tmp_path: Path) -> Path:
    root = tmp_path / "real"
    _png(root / "Vias" / "a.PNG")
    _png(root / "Vias" / "nested" / "b.png")
    _png(root / "defect bridge" / "c.png")
    _png(root / "OTHERS" / "d.png")
    _png(root / "scratch" / "e.png")
    _png(root / "Clean" / "f.png")
    _png(root / "cmp_scratches" / "g.png")  # a second folder for class cmp
    _png(root / "partcle" / "h.png")  # misspelt: unknown, with a suggestion
    (root / "crack").mkdir()  # empty class folder
    (root / "OTHERS" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (root / "OTHERS" / "notes.txt").write_text("hello")
    (root / "OTHERS" / ".DS_Store").write_bytes(b"\0")
    (root / "OTHERS" / "._d.png").write_bytes(b"\0")
    _png(root / "loose.png")
    return root


def test_import_messy_folder(messy: Path):
    rep = import_folder(messy, PHASE1, TAX)
    by_class = {cls: sorted(Path(p).name for p, c in rep.items if c == cls) for cls in PHASE1}
    assert by_class["via"] == ["a.PNG", "b.png"]
    assert by_class["bridge"] == ["c.png"]
    assert by_class["other"] == ["d.png"]
    assert by_class["cmp"] == ["e.png", "g.png"]
    assert by_class["clean"] == ["f.png"]
    assert rep.items == sorted(rep.items) and all(Path(p).is_absolute() for p, _ in rep.items)
    assert rep.counts["via"] == 2 and rep.counts["particle"] == 0
    assert rep.merged == {"cmp": ["cmp_scratches", "scratch"]}
    assert list(rep.unknown_folders) == ["partcle"]
    assert rep.unknown_folders["partcle"][0] == "particle"
    assert rep.empty_classes == ["crack"]
    assert set(rep.missing_classes) == {"open", "ler", "particle"}
    skipped = {Path(p).name: reason for p, reason in rep.skipped}
    assert set(skipped) == {"broken.png", "notes.txt", "loose.png"}  # hidden files silent
    assert "corrupt" in skipped["broken.png"] or "not an image" in skipped["broken.png"]
    assert "unsupported" in skipped["notes.txt"]
    assert skipped["loose.png"] == "not in a class folder"
    text = rep.summary()
    assert "partcle" in text and "did you mean particle" in text and "scratch" in text
    # b.png sits in Vias/nested: counted for via, and the summary says so.
    assert rep.nested == {"Vias": 1}
    assert "Counted 1 image in nested subfolders" in text and "Vias (1)" in text
    assert rep.bit_depths == {} and "8 bits" not in text  # all 8-bit
    assert json.loads(json.dumps(rep.to_dict()))["counts"]["via"] == 2


def test_phase3_names_do_not_resolve_plain_clean(messy: Path):
    rep = import_folder(messy, TAX.phase("phase3").classes, TAX, check_images=False)
    assert "Clean" in rep.unknown_folders
    assert rep.counts["VIA"] == 2
    # Without decoding, the corrupt file is kept; the .txt is still skipped by suffix.
    assert any(p.endswith("broken.png") for p, _ in rep.items)


def test_missing_root_names_path(tmp_path: Path):
    with pytest.raises(UserError, match=str(tmp_path / "nope")):
        import_folder(tmp_path / "nope", PHASE1, TAX)
    _png(tmp_path / "file.png")
    with pytest.raises(UserError, match="not a directory"):
        import_folder(tmp_path / "file.png", PHASE1, TAX)


def test_no_usable_image_is_an_error(tmp_path: Path):
    _png(tmp_path / "holiday" / "x.png")
    _png(tmp_path / "via" / "tiny.png", size=4)
    with pytest.raises(UserError, match="no usable image") as info:
        import_folder(tmp_path, PHASE1, TAX)
    assert "holiday" in str(info.value) and "too small" in str(info.value)


def test_load_unlabelled(tmp_path: Path):
    _png(tmp_path / "b.png")
    _png(tmp_path / "sub" / "a.jpg")
    (tmp_path / "c.tif").write_bytes(b"")
    (tmp_path / ".hidden.png").write_bytes(b"")
    usable, skipped = load_unlabelled(tmp_path)
    assert [Path(p).name for p in usable] == ["b.png", "a.jpg"]
    assert [(Path(p).name, r) for p, r in skipped] == [("c.tif", "empty file (0 bytes)")]


def test_report_names_the_bit_depth_of_each_folder(tmp_path: Path):
    scene = np.full((32, 32), 3000, np.uint16)
    bright = scene.copy()
    bright[0, 0] = 5000  # one pixel past 12 bits: the folder is 16-bit, both images
    (tmp_path / "via").mkdir()
    (tmp_path / "clean").mkdir()
    cv2.imwrite(str(tmp_path / "via" / "a.png"), scene)
    cv2.imwrite(str(tmp_path / "via" / "b.png"), bright)
    cv2.imwrite(str(tmp_path / "clean" / "c.png"), scene)
    _png(tmp_path / "clean" / "d.png")  # 8-bit: no bit depth to report
    rep = import_folder(tmp_path, PHASE1, TAX)
    assert rep.bit_depths == {
        "via": [{"bits": 16, "source": "folder maximum 5000", "images": 2}],
        "clean": [{"bits": 12, "source": "folder maximum 3000", "images": 1}],
    }
    text = rep.summary()
    assert "via: 16-bit for 2 images (folder maximum 5000)" in text
    assert "clean: 12-bit for 1 image (folder maximum 3000)" in text
    assert "Folders differ in bit depth" in text
    assert json.loads(json.dumps(rep.to_dict()))["bit_depths"]["via"][0]["bits"] == 16
