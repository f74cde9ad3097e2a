"""sim_to_real: how far the synthetic images are from each real folder the params name
(`data.real.<phase>.train`, `.test`, `.unlabeled`), by pipeline.evaluate.domain_gap: the
Fréchet distance of frozen ImageNet features, a real-vs-synthetic classifier's accuracy and
low-level statistics, per class where the folder is labelled.

Its own stage, so that naming a real folder never reruns synthesis. Without real folders it
writes an empty summary; every generator change shows its effect here and in MLflow.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

from pipeline import layout
from pipeline.evaluate.domain_gap import gap_table, measure_folders
from pipeline.files import atomic_dir, write_json
from pipeline.taxonomy import Taxonomy
from pipeline.tracking import StageRun

log = logging.getLogger(__name__)
KINDS = ("train", "test", "unlabeled")


def real_folders(cfg: dict) -> dict[str, tuple[str, Path]]:
    """`<phase>_<kind>` → (the phase's taxonomy, folder) for every real folder configured."""
    real = cfg["data"]["real"]
    return {f"{phase}_{kind}": (cfg["phases"][phase]["taxonomy"],
                                Path(real[phase][kind]).expanduser())
            for phase in sorted(cfg["phases"]) if phase in real
            for kind in KINDS if real[phase].get(kind)}


def run(cfg: dict, root: Path) -> None:
    taxonomy = Taxonomy.from_config(cfg["taxonomy"])
    folders = real_folders(cfg)
    with StageRun(root, cfg, "sim_to_real") as tracker:
        tracker.log_params({"real": cfg["data"]["real"]})
        summary, metrics = {}, {}
        with atomic_dir(root / layout.DOMAIN_GAP) as out:
            for name, (tax_phase, folder) in folders.items():
                rows = measure_folders(root / layout.SYNTHETIC, folder, taxonomy, tax_phase,
                                       out / name)
                overall = rows[0]  # scope "all"
                summary[name] = {"folder": str(folder), "taxonomy": tax_phase,
                                 "overall": asdict(overall)}
                metrics[f"{name}/frechet"] = overall.frechet
                metrics[f"{name}/domain_accuracy"] = overall.domain_accuracy
                log.info("domain gap, synthetic against %s (%s):\n%s", name, folder,
                         gap_table(rows))
            write_json(out / "summary.json", summary)
        tracker.log_metrics({k: v for k, v in metrics.items() if v is not None})
        tracker.log_artifacts(root / layout.DOMAIN_GAP, "domain_gap")
        if not folders:
            log.info("domain gap: no real folder in data.real; nothing to compare")
