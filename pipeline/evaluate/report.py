"""A self-contained report.html: inline CSS, images as data URIs, nothing fetched.

The evaluate stage fills a `ReportContext` (a plain dict) and calls `write_report`. Every
section is optional except the header; a missing section says so instead of vanishing, so a
reader sees what was not measured. All text is escaped.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal, TypedDict

import cv2
import numpy as np

from pipeline.files import write_text


class SummaryRow(TypedDict, total=False):
    """One model format on one test set; metrics from classification_metrics (fractions)."""

    test_set: str  # e.g. "test (synthetic)", "real_phase1"
    model: str  # "torch fp32" | "onnx fp32" | "onnx int8" | "tflite int8"
    accuracy: float
    macro_f1: float
    defect_recall: float
    clean_false_alarm: float
    ece: float
    latency_ms: float  # host batch-1 median (host_latency_ms)


class FigureEntry(TypedDict):
    title: str
    png: bytes  # plots.figure_png(fig)


class Misclassified(TypedDict):
    image: np.ndarray | bytes  # uint8 (H, W) thumbnail, or PNG bytes
    name: str  # file name / relative path
    true: str
    predicted: str
    confidence: float


class ReportContext(TypedDict, total=False):
    """What render_report shows; only title, phase and data_kind are required.

    per_class: test set → classification_metrics(...)["per_class"].
    robustness_table: robustness.robustness_table rows; robustness_png: its figure.
    ood: {"threshold": float, "quantile": float, "sets": {name: ood.flag_summary(...)}}.
    class_mapping: folder.ClassMapping.report() when the model's taxonomy differs.
    edge: manifest.edge_report(...) of the int8 TFLite model.
    provenance: e.g. {"model sha256": ..., "git commit": ..., "params hash": ...}.
    """

    title: str
    phase: str
    data_kind: Literal["real", "stand-in"]
    data_note: str  # which folders / held-out profiles were the "real" test data
    summary: list[SummaryRow]
    confusions: list[FigureEntry]
    per_class: dict[str, dict[str, dict]]
    worst: list[Misclassified]
    robustness_table: list[dict]
    robustness_png: bytes
    ood: dict
    class_mapping: dict
    edge: dict
    provenance: dict[str, str]


_SUMMARY_COLS = [("accuracy", "Accuracy", "pct"), ("macro_f1", "Macro F1", "pct"),
                 ("defect_recall", "Defect recall", "pct"),
                 ("clean_false_alarm", "Clean false alarm", "pct"), ("ece", "ECE", "f3"),
                 ("latency_ms", "Host latency", "ms")]
_EDGE_FIELDS = [("flash_bytes", "Flash (model)", "kib"), ("arena_bytes", "Tensor arena", "kib"),
                ("ram_total_bytes", "RAM, model in flash", "kib"),
                ("ram_total_model_in_sram_bytes", "RAM, model in SRAM", "kib"),
                ("sram_budget_bytes", "SRAM budget", "kib"), ("macs", "MACs / image", "mega"),
                ("m7_latency_ms_estimate", "Cortex-M7 estimate", "ms"),
                ("m7_latency_ms_best_case", "Cortex-M7 best case", "ms"),
                ("host_latency_ms", "Host latency (int8)", "ms"), ("host", "Host", "text"),
                ("fits_sram_model_in_flash", "Fits SRAM (model in flash)", "flag"),
                ("fits_sram_model_in_sram", "Fits SRAM (model in SRAM)", "flag"),
                ("m7_assumption", "M7 assumption", "text"), ("flash_note", "Flash note", "text")]

_CSS = """
:root{--ink:#1d2733;--muted:#5f6b7a;--line:#dfe4ea;--bg:#f5f7fa;--card:#fff;--accent:#1f5fa8}
*{box-sizing:border-box}
body{margin:0;font:14px/1.5 -apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
 color:var(--ink);background:var(--bg)}
header{background:#16324f;color:#fff;padding:22px 40px 18px}
header h1{margin:0;font-size:22px;font-weight:600}
header .sub{color:#b9c8d8;font-size:13px;margin-top:4px}
.phase{display:inline-block;background:#2d6fb3;border-radius:10px;padding:1px 10px;
 font-size:12px;margin-left:8px;vertical-align:3px}
nav{padding:8px 40px;background:#fff;border-bottom:1px solid var(--line);font-size:13px}
nav a{color:var(--accent);text-decoration:none;margin-right:16px}
main{max-width:1180px;margin:0 auto;padding:20px 40px 48px}
section{background:var(--card);border:1px solid var(--line);border-radius:8px;
 padding:16px 20px;margin:18px 0}
h2{font-size:16px;margin:0 0 12px;color:#16324f}
h3{font-size:14px;margin:14px 0 6px;color:var(--muted)}
.banner{border-radius:8px;padding:12px 16px;margin:18px 0 0;font-size:14px}
.banner b{letter-spacing:.04em}
.real{background:#e7f5ec;border:1px solid #9fd3b1;color:#17502d}
.standin{background:#fff4e0;border:1px solid #f0c36d;color:#6b4500}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{padding:6px 10px;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap}
th{background:#f0f3f7;color:var(--muted);font-weight:600}
th:first-child,td:first-child,td.l,th.l{text-align:left}
tr.group td{background:#fafbfc;font-weight:600;color:#16324f;text-align:left}
td.bar{width:190px}
td.bar em{display:inline-block;width:52px;font-style:normal}
td.bar i{display:inline-block;width:110px;height:8px;background:#edf1f5;border-radius:4px;
 vertical-align:middle;overflow:hidden}
td.bar i b{display:block;height:100%;background:#3b7dc4}
.muted{color:var(--muted)}
.na{color:var(--muted);font-style:italic}
.ok{color:#17803d;font-weight:600}.bad{color:#b42318;font-weight:600}
.figs{display:flex;flex-wrap:wrap;gap:16px}
figure{margin:0;flex:1 1 340px;text-align:center}
figure img{max-width:100%;border:1px solid var(--line);border-radius:4px}
figcaption{font-size:12px;color:var(--muted)}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:12px}
.thumb{border:1px solid var(--line);border-radius:6px;padding:8px;font-size:12px}
.thumb img{width:100%;aspect-ratio:1;object-fit:cover;border-radius:3px;background:#000}
.thumb .name{color:var(--muted);overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.kv td:first-child{color:var(--muted);width:34%}
.kv td{text-align:left;white-space:normal;word-break:break-all}
"""


def render_report(ctx: ReportContext | Mapping) -> str:
    """The report as one HTML string (see ReportContext for the keys)."""
    sections = [
        ("summary", "Summary by model format", _summary(ctx.get("summary"))),
        ("confusion", "Confusion matrices", _figures(ctx.get("confusions"))),
        ("per-class", "Per-class results", _per_class(ctx.get("per_class"))),
        ("errors", "Most confident mistakes", _worst(ctx.get("worst"))),
        ("saliency", "Where the model looks", _saliency(ctx.get("saliency"))),
        ("robustness", "Robustness to image corruptions",
         _robustness(ctx.get("robustness_table"), ctx.get("robustness_png"))),
        ("ood", "Low-confidence flag", _ood(ctx.get("ood"))),
        ("edge", "Edge deployment (i.MX RT1170)", _edge(ctx.get("edge"))),
        ("provenance", "Provenance", _kv(ctx.get("provenance"))),
    ]
    if ctx.get("class_mapping"):
        sections.insert(1, ("mapping", "Class mapping", _mapping(ctx["class_mapping"])))
    nav = "".join(f'<a href="#{sid}">{_e(title)}</a>' for sid, title, _ in sections)
    body = "".join(f'<section id="{sid}"><h2>{_e(title)}</h2>{content}</section>'
                   for sid, title, content in sections)
    title = _e(ctx["title"])
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{title}</title><style>{_CSS}</style></head><body>"
            f'<header><h1>{title}<span class="phase">{_e(ctx["phase"])}</span></h1>'
            f'<div class="sub">SEM defect classification — evaluation report</div></header>'
            f"<nav>{nav}</nav><main>{_banner(ctx)}{body}</main></body></html>\n")


def write_report(path: str | Path, ctx: ReportContext | Mapping) -> None:
    """Render and write atomically."""
    write_text(path, render_report(ctx))


# ---- sections ---------------------------------------------------------------------------

def _banner(ctx: Mapping) -> str:
    note = f" {_e(ctx['data_note'])}" if ctx.get("data_note") else ""
    if ctx["data_kind"] == "real":
        return ('<div class="banner real"><b>REAL DATA.</b> Test sets include real SEM images.'
                f"{note}</div>")
    if ctx["data_kind"] != "stand-in":
        raise ValueError(f"data_kind must be 'real' or 'stand-in', got {ctx['data_kind']!r}")
    return ('<div class="banner standin"><b>STAND-IN DATA.</b> No real images were configured: '
            'the "real" test sets are synthetic images from held-out tool profiles, a stand-in '
            f"for an unseen tool. These numbers do not measure performance on real images.{note}"
            "</div>")


def _summary(rows: Sequence[Mapping] | None) -> str:
    if not rows:
        return _na("No model was scored.")
    head = "".join(f"<th>{_e(label)}</th>" for _, label, _ in _SUMMARY_COLS)
    out = [f'<table><tr><th class="l">Model</th>{head}</tr>']
    for test_set in dict.fromkeys(r.get("test_set", "") for r in rows):
        out.append(f'<tr class="group"><td colspan="{len(_SUMMARY_COLS) + 1}">'
                   f"{_e(test_set)}</td></tr>")
        for r in (r for r in rows if r.get("test_set", "") == test_set):
            cells = "".join(f"<td>{_fmt(r.get(key), kind)}</td>" for key, _, kind in _SUMMARY_COLS)
            out.append(f"<tr><td>{_e(r.get('model', ''))}</td>{cells}</tr>")
    out.append("</table><p class='muted'>Defect recall: share of defective images predicted as "
               "any defect. Clean false alarm: share of clean images predicted as a defect. "
               "ECE: expected calibration error (15 bins). Latency: batch-1 median on the "
               "host, preprocessing included.</p>")
    return "".join(out)


def _figures(figs: Sequence[Mapping] | None) -> str:
    if not figs:
        return _na("No confusion matrix.")
    items = "".join(f'<figure><img alt="{_e(f["title"])}" src="{_png_uri(f["png"])}">'
                    f"<figcaption>{_e(f['title'])}</figcaption></figure>" for f in figs)
    return f'<div class="figs">{items}</div>'


def _per_class(per_class: Mapping[str, Mapping] | None) -> str:
    if not per_class:
        return _na("No per-class results.")
    out = []
    for test_set, classes in per_class.items():
        out.append(f"<h3>{_e(test_set)}</h3><table><tr><th class='l'>Class</th><th>Precision</th>"
                   "<th>Recall</th><th class='l'>F1</th><th>Support</th></tr>")
        for name, m in classes.items():
            f1 = m.get("f1", float("nan"))
            width = 0 if _missing(f1) else round(100 * f1)
            out.append(f"<tr><td>{_e(name)}</td><td>{_fmt(m.get('precision'), 'pct')}</td>"
                       f"<td>{_fmt(m.get('recall'), 'pct')}</td>"
                       f"<td class='bar l'><em>{_fmt(f1, 'pct')}</em>"
                       f"<i><b style='width:{width}%'></b></i></td>"
                       f"<td>{_fmt(m.get('support'), 'int')}</td></tr>")
        out.append("</table>")
    return "".join(out)


def _worst(items: Sequence[Mapping] | None) -> str:
    if not items:
        return _na("No misclassified images (or none recorded).")
    cards = "".join(
        f'<div class="thumb"><img alt="{_e(it["name"])}" src="{_png_uri(it["image"])}">'
        f'<div class="name" title="{_e(it["name"])}">{_e(it["name"])}</div>'
        f"<div>true <b>{_e(it['true'])}</b></div><div>predicted <b class='bad'>"
        f"{_e(it['predicted'])}</b></div><div class='muted'>confidence "
        f"{_fmt(it['confidence'], 'pct')}</div></div>" for it in items)
    return f'<div class="grid">{cards}</div>'


def _saliency(saliency: Mapping | None) -> str:
    """Saliency overlays per class and the localisation table against the defect masks."""
    if not saliency:
        return _na("Saliency was not computed (evaluate.localisation_images: 0).")
    metrics = saliency["metrics"]
    models = metrics["models"]
    flagged = metrics["looks_elsewhere"]
    note = (f'<p class="bad">The delivered model recognises {", ".join(map(_e, flagged))} '
            "while putting no more of its saliency on the defect than a blind map would: "
            "check what it relies on.</p>") if flagged else ""
    head = ("<tr><th>defect class</th><th>images</th><th>mask share</th>"
            + "".join(f"<th>{_e(m)} peak in mask</th><th>{_e(m)} mass in mask</th>"
                      for m in models) + "</tr>")
    rows = "".join(
        f"<tr><td>{_e(cls)}</td><td>{row['n']}</td><td>{_fmt(row['mask_share'], 'pct')}</td>"
        + "".join(f"<td>{_fmt(models[m][cls]['peak_inside'], 'pct')}</td>"
                  f"<td>{_fmt(models[m][cls]['mass_inside'], 'pct')}</td>" for m in models)
        + "</tr>" for cls, row in models["student"].items())
    table = (f"<p class='muted'>Synthetic test images: the share whose saliency peak, and the "
             f"share of saliency mass, fall within {metrics['tolerance_px']} px of the defect "
             "mask; mask share is what a map blind to the image would score.</p>"
             f"<table>{head}{rows}</table>")
    cards = "".join(
        f'<div class="thumb"><img alt="{_e(it["name"])}" src="{_png_uri(it["image"])}">'
        f'<div class="name" title="{_e(it["name"])}">{_e(it["name"])}</div>'
        f"<div>{_e(it['kind'])}: true <b>{_e(it['true'])}</b></div><div>predicted <b>"
        f"{_e(it['predicted'])}</b> ({_fmt(it['confidence'], 'pct')})</div></div>"
        for it in saliency.get("overlays", []))
    return f'{note}{table}<h3>Overlays (delivered model)</h3><div class="grid">{cards}</div>'


def _robustness(table: Sequence[Mapping] | None, png: bytes | None) -> str:
    if not table:
        return _na("Robustness was not measured.")
    fig = f'<figure><img alt="robustness curves" src="{_png_uri(png)}"></figure>' if png else ""
    rows = "".join(f"<tr><td>{_e(r['corruption'])}</td><td>{r['level']:g}</td>"
                   f"<td>{_fmt(r['accuracy'], 'pct')}</td><td>{_fmt(r['macro_f1'], 'pct')}</td>"
                   f"<td>{_fmt(r['drop_vs_clean'], 'pct')}</td></tr>" for r in table)
    return (f"{fig}<table><tr><th class='l'>Corruption</th><th>Level</th><th>Accuracy</th>"
            f"<th>Macro F1</th><th>Drop vs clean</th></tr>{rows}</table>")


def _ood(ood: Mapping | None) -> str:
    if not ood:
        return _na("No low-confidence threshold was calibrated.")
    head = (f"<p>Images whose top softmax probability is below <b>{_fmt(ood['threshold'], 'f3')}"
            f"</b> are flagged for review. The threshold is the "
            f"{_fmt(ood.get('quantile'), 'pct')} quantile of validation confidences (never "
            "fitted on test data).</p>")
    rows = "".join(f"<tr><td>{_e(name)}</td><td>{_fmt(s.get('n'), 'int')}</td>"
                   f"<td>{_fmt(s.get('flag_rate'), 'pct')}</td>"
                   f"<td>{_fmt(s.get('accuracy_kept'), 'pct')}</td>"
                   f"<td>{_fmt(s.get('accuracy_flagged'), 'pct')}</td></tr>"
                   for name, s in ood.get("sets", {}).items())
    return (f"{head}<table><tr><th class='l'>Set</th><th>Images</th><th>Flagged</th>"
            f"<th>Accuracy kept</th><th>Accuracy flagged</th></tr>{rows}</table>")


def _mapping(mapping: Mapping) -> str:
    how = {**{m: "same name" for m in mapping.get("by_name", {})},
           **{m: "override" for m in mapping.get("by_override", {})},
           **{m: "default" for m in mapping.get("by_default", {})}}
    rows = "".join(f"<tr><td>{_e(m)}</td><td class='l'>{_e(t)}</td><td class='l'>"
                   f"{_e(how.get(m, ''))}</td></tr>" for m, t in mapping["mapping"].items())
    notes = "".join(f"<p class='muted'>{_e(m)} could mean {_e(', '.join(c))}.</p>"
                    for m, c in mapping.get("ambiguous", {}).items())
    if mapping.get("unpredictable_targets"):
        notes += (f"<p class='bad'>Classes the model cannot predict: "
                  f"{_e(', '.join(mapping['unpredictable_targets']))}</p>")
    return (f"<table><tr><th class='l'>Model class</th><th class='l'>Scored as</th>"
            f"<th class='l'>Mapped by</th></tr>{rows}</table>{notes}")


def _edge(edge: Mapping | None) -> str:
    if not edge:
        return _na("No edge report (the int8 TFLite model was not built).")
    known = {key for key, _, _ in _EDGE_FIELDS}
    fields = [(k, label, kind) for k, label, kind in _EDGE_FIELDS if k in edge]
    fields += [(k, k, "text") for k in edge if k not in known]
    rows = "".join(f"<tr><td>{_e(label)}</td><td>{_fmt(edge[k], kind)}</td></tr>"
                   for k, label, kind in fields)
    return f'<table class="kv">{rows}</table>'


def _kv(pairs: Mapping | None) -> str:
    if not pairs:
        return _na("No provenance recorded.")
    rows = "".join(f"<tr><td>{_e(k)}</td><td><code>{_e(v)}</code></td></tr>"
                   for k, v in pairs.items())
    return f'<table class="kv">{rows}</table>'


# ---- formatting -------------------------------------------------------------------------

def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _na(text: str) -> str:
    return f'<p class="na">{_e(text)}</p>'


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _fmt(value: object, kind: str) -> str:
    if _missing(value):
        return '<span class="na">—</span>'
    if kind == "flag":
        return '<span class="ok">yes</span>' if value else '<span class="bad">no</span>'
    if kind == "text" or not isinstance(value, int | float):
        return _e(value)
    formats = {"pct": f"{100 * value:.1f} %", "f3": f"{value:.3f}", "ms": f"{value:.2f} ms",
               "int": f"{int(value):,}", "kib": f"{value / 1024:,.1f} KiB",
               "mega": f"{value / 1e6:,.1f} M"}
    return _e(formats[kind])


def _png_uri(image: np.ndarray | bytes) -> str:
    """A data URI for PNG bytes or a uint8 array (encoded as PNG)."""
    if isinstance(image, np.ndarray):
        ok, buf = cv2.imencode(".png", image)
        if not ok:
            raise ValueError(f"cannot encode an image of shape {image.shape} as PNG")
        image = buf.tobytes()
    return "data:image/png;base64," + base64.b64encode(image).decode("ascii")
