"""report.html: all sections, escaped text, nothing fetched from outside."""

import errno
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from pipeline.evaluate import report as report_module
from pipeline.evaluate.plots import confusion_figure, figure_png
from pipeline.evaluate.report import render_report, write_report
from pipeline.evaluate.robustness import robustness_figure
from pipeline.export.manifest import edge_report

CLASSES = ["Bridge", "Clean", "CMP", "VIA"]
FORMATS = ["torch fp32", "onnx fp32", "onnx int8", "tflite int8"]


def synthetic_ctx(tmp_path, data_kind="stand-in") -> dict:
    rng = np.random.default_rng(0)
    summary = [{"test_set": test_set, "model": fmt, "accuracy": 0.9 - 0.01 * i,
                "macro_f1": 0.88 - 0.01 * i, "defect_recall": 0.95, "clean_false_alarm": 0.04,
                "ece": 0.031, "latency_ms": 1.5 + i}
               for test_set in ("test (synthetic)", "held-out profiles") for i, fmt in
               enumerate(FORMATS)]
    summary[-1]["latency_ms"] = None  # not measured → shown as a dash
    cm = [[9, 1, 0, 0], [0, 10, 0, 0], [1, 0, 8, 1], [0, 2, 0, 8]]
    table = [{"corruption": "clean", "level": 0.0, "accuracy": 0.9, "macro_f1": 0.88,
              "drop_vs_clean": 0.0}]
    table += [{"corruption": k, "level": lv, "accuracy": 0.9 - d, "macro_f1": 0.87 - d,
               "drop_vs_clean": d} for k, levels in (("noise", (4, 8, 16)), ("blur", (0.8, 2.5)))
              for lv, d in zip(levels, (0.02, 0.08, 0.2), strict=False)]
    tflite = tmp_path / "model_int8.tflite"
    tflite.write_bytes(b"\0" * 150_000)
    per_class = {name: {"precision": 0.9, "recall": r, "f1": 0.85, "support": 10}
                 for name, r in zip(CLASSES, (0.9, 1.0, 0.8, float("nan")), strict=True)}
    return {
        "title": "Phase 2 evaluation <draft>",
        "phase": "phase2",
        "data_kind": data_kind,
        "data_note": "Held-out profiles: tool_c, tool_d.",
        "summary": summary,
        "confusions": [{"title": f"test ({kind})", "png": figure_png(confusion_figure(
            cm, CLASSES, f"test ({kind})", normalise=kind == "normalised"))}
            for kind in ("counts", "normalised")],
        "per_class": {"test (synthetic)": per_class},
        "worst": [{"image": rng.integers(0, 256, (48, 48), dtype=np.uint8),
                   "name": f"VIA/img_{i}.png", "true": "VIA", "predicted": "Bridge",
                   "confidence": 0.97 - 0.05 * i} for i in range(6)],
        "robustness_table": table,
        "robustness_png": figure_png(robustness_figure(table)),
        "saliency": {"metrics": {
            "models": {m: {"bridge": {"peak_inside": 0.25, "mass_inside": 0.05,
                                      "mask_share": 0.06, "n": 4}} for m in ("student", "teacher")},
            "looks_elsewhere": ["bridge"], "tolerance_px": 8},
            "overlays": [{"image": rng.integers(0, 256, (48, 48, 3), dtype=np.uint8),
                          "name": "BRIDGE/b.png", "true": "Bridge", "predicted": "Bridge",
                          "confidence": 0.9, "kind": "correct"}]},
        "ood": {"threshold": 0.41, "quantile": 0.05,
                "sets": {"val": {"n": 200, "flag_rate": 0.05, "accuracy_kept": 0.93,
                                 "accuracy_flagged": 0.4}}},
        "class_mapping": {"mapping": {"clean": "Clean", "bridge": "Bridge", "cmp": "CMP",
                                      "via": "VIA"},
                          "by_name": {"clean": "Clean", "bridge": "Bridge", "cmp": "CMP",
                                      "via": "VIA"}, "by_override": {}, "by_default": {},
                          "ambiguous": {}, "unpredictable_targets": []},
        "edge": edge_report(tflite, 180_000, 12_500_000),
        "provenance": {"model sha256": "ab" * 32, "git commit": "3c973d2",
                       "params hash": "<script>alert(1)</script>"},
    }


class _Checker(HTMLParser):
    """Collects tags, ids and every src/href value; checks tags are balanced."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self):
        super().__init__()
        self.stack, self.ids, self.urls, self.errors = [], [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.ids += [attrs["id"]] if "id" in attrs else []
        self.urls += [attrs[k] for k in ("src", "href") if k in attrs]
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)


def test_report_has_every_section_and_is_self_contained(tmp_path):
    page = render_report(synthetic_ctx(tmp_path))
    checker = _Checker()
    checker.feed(page)
    assert checker.errors == [] and checker.stack == []
    assert set(checker.ids) == {"summary", "mapping", "confusion", "per-class", "errors",
                                "saliency", "robustness", "ood", "edge", "provenance"}
    # Only in-page anchors and inline images: nothing is fetched.
    assert all(u.startswith(("#", "data:image/png;base64,")) for u in checker.urls)
    assert "://" not in page and "url(" not in page and "@import" not in page
    assert len([u for u in checker.urls if u.startswith("data:")]) == 2 + 6 + 1 + 1
    assert "recognises bridge while putting no more" in page
    assert "STAND-IN DATA" in page and "REAL DATA" not in page
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "Phase 2 evaluation &lt;draft&gt;" in page
    for fmt in FORMATS:
        assert page.count(f"<td>{fmt}</td>") == 2
    assert "175.8 KiB" in page  # arena 180000 B
    assert re.search(r"Cortex-M7 estimate</td><td>25\.00 ms", page)


def test_report_real_banner_and_missing_sections(tmp_path):
    page = render_report({"title": "t", "phase": "phase1", "data_kind": "real"})
    assert "REAL DATA" in page and "STAND-IN" not in page
    assert "Robustness was not measured." in page and "No edge report" in page
    with pytest.raises(ValueError, match="data_kind"):
        render_report({"title": "t", "phase": "phase1", "data_kind": "synthetic"})


def test_write_report_is_atomic_and_complete(tmp_path):
    path = tmp_path / "reports" / "report.html"
    write_report(path, synthetic_ctx(tmp_path, "real"))
    assert path.read_text(encoding="utf-8").endswith("</html>\n")
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]


@pytest.mark.parametrize("failure", ["render", "write"])
def test_failed_report_keeps_the_previous_one_and_no_temporary_file(tmp_path, monkeypatch,
                                                                    failure):
    """A section that raises midway, or a disk that fills after half the page is written,
    leaves the previous report byte for byte and nothing else beside it."""
    path = tmp_path / "reports" / "report.html"
    write_report(path, synthetic_ctx(tmp_path, "real"))
    before = path.read_bytes()
    ctx = synthetic_ctx(tmp_path)  # built first: it writes a file itself
    if failure == "render":
        def broken_section(edge):  # after the summary, mapping, ... sections have rendered
            raise RuntimeError("section failed")

        monkeypatch.setattr(report_module, "_edge", broken_section)
        error = RuntimeError
    else:
        real_write = Path.write_bytes

        def half_then_full_disk(self, data):
            if self.parent != path.parent:
                return real_write(self, data)
            real_write(self, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(Path, "write_bytes", half_then_full_disk)
        error = OSError
    with pytest.raises(error):
        write_report(path, ctx)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]
