"""Wall time per stage of the latest pipeline run, read back from the MLflow store.

Usage (from the repo root, after `dvc repro`): python bench/stage_times.py
Each stage's child run spans its whole execution (data loading, training, export, logging).
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlflow.tracking import MlflowClient  # noqa: E402

from pipeline.config import find_root  # noqa: E402
from pipeline.tracking import resolve_uri  # noqa: E402


def stage_times(root: Path) -> list[tuple[str, float, str]]:
    """(stage run name, seconds, finished ISO time) of the latest finished run of each stage,
    in start order; empty when nothing has run yet."""
    client = MlflowClient(tracking_uri=resolve_uri(root))
    exp = client.get_experiment_by_name("sem-defect-pipeline")
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], "tags.stage != ''", max_results=500,
                              order_by=["attributes.start_time DESC"])
    latest: dict[str, object] = {}
    for run in runs:  # newest first: keep the latest execution of each stage
        name = run.info.run_name
        if name not in latest and run.info.status == "FINISHED":
            latest[name] = run
    return [(run.info.run_name, (run.info.end_time - run.info.start_time) / 1000,
             datetime.fromtimestamp(run.info.end_time / 1000).isoformat(timespec="seconds"))
            for run in sorted(latest.values(), key=lambda r: r.info.start_time)]


def main() -> None:
    rows = stage_times(find_root())
    if not rows:
        sys.exit("no MLflow stage runs yet: run `dvc repro` first")
    print("| stage | wall time (s) | finished |")
    print("|---|---|---|")
    for name, seconds, end in rows:
        print(f"| {name} | {seconds:.0f} | {end} |")
    print(f"| total | {sum(r[1] for r in rows):.0f} | |")


if __name__ == "__main__":
    main()
