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


def main() -> None:
    client = MlflowClient(tracking_uri=resolve_uri(find_root()))
    exp = client.get_experiment_by_name("sem-defect-pipeline")
    if exp is None:
        sys.exit("no MLflow experiment yet: run `dvc repro` first")
    runs = client.search_runs([exp.experiment_id], "tags.stage != ''", max_results=500,
                              order_by=["attributes.start_time DESC"])
    latest: dict[str, object] = {}
    for run in runs:  # newest first: keep the latest execution of each stage
        name = run.info.run_name
        if name not in latest and run.info.status == "FINISHED":
            latest[name] = run
    total = 0.0
    print("| stage | wall time (s) | finished |")
    print("|---|---|---|")
    for run in sorted(latest.values(), key=lambda r: r.info.start_time):
        seconds = (run.info.end_time - run.info.start_time) / 1000
        total += seconds
        end = datetime.fromtimestamp(run.info.end_time / 1000).isoformat(timespec="seconds")
        print(f"| {run.info.run_name} | {seconds:.0f} | {end} |")
    print(f"| total | {total:.0f} | |")


if __name__ == "__main__":
    main()
