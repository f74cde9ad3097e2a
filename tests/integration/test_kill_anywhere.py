"""A stage killed at any point (kill -9) loses nothing and leaves nothing: the next
`dvc repro` brings back byte-identical outputs, with no stray files beside them or in /tmp,
no orphan process, and no MLflow run left RUNNING once a stage runs again."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.integration.conftest import BIN, run

pytestmark = pytest.mark.integration

STAGES = [("synthesize", None), ("split", None), ("train_teacher", None),
          ("distill_student", None), ("finetune_real", "phase1"), ("quantize", "phase1"),
          ("evaluate", "phase1")]
# Measured each run (host latency) or naming the commit: not expected to be byte-identical.
VARYING = ("reports/phase1/report.html", "reports/phase2/report.html",
           "reports/phase3/report.html")
TMP_PREFIXES = ("edge_", "onnx2tf_", "quant_", "ort.quant.")


def _outputs(project: Path) -> dict[str, str]:
    """Every output DVC recorded in dvc.lock, with its hash, metrics files excluded (they
    hold timings)."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    return {o["path"]: o["md5"] for spec in lock.values() for o in spec.get("outs", [])
            if not o["path"].startswith("reports/") or o["path"].endswith(".csv")
            and o["path"] not in VARYING}


def _tmp_debris() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).iterdir()
            if p.name.startswith(TMP_PREFIXES)}


def _strays(project: Path) -> list[str]:
    skip = {".git", ".dvc", "mlartifacts"}
    return [str(p.relative_to(project)) for p in project.rglob(".*")
            if not set(p.relative_to(project).parts) & skip
            and (p.name.endswith((".tmp", ".work")) or p.name.startswith(".edge_"))]


def test_a_stage_killed_anywhere_recovers_exactly(smoke_project, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(smoke_project, project, symlinks=True)
    reference = _outputs(project)
    debris_before = _tmp_debris()
    env = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    rng = random.Random(7)
    for stage, phase in STAGES:
        cmd = [sys.executable, "-m", "pipeline", stage, *([phase] if phase else [])]
        proc = subprocess.Popen(cmd, cwd=project, env=env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(4.0, 12.0))  # imports take ~4 s: kill inside the work
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)  # the stage only, as a user's kill -9 would
        proc.wait()
        deadline, orphans = time.time() + 15, ["?"]
        while orphans and time.time() < deadline:  # loader workers notice within seconds
            time.sleep(0.5)
            orphans = subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True,
                                     text=True).stdout.split()
        assert not orphans, f"{stage}: processes outlived the killed stage: {orphans}"
        run(["dvc", "repro"], project)
    assert _outputs(project) == reference
    assert _tmp_debris() <= debris_before
    # The next stage to run clears what killed stages left and marks their MLflow runs
    # FAILED (the repro after a kill reruns nothing when the outputs survived).
    run(["dvc", "repro", "-f", "-s", "split"], project)
    assert _strays(project) == []
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    exp = client.get_experiment_by_name("sem-defect-pipeline")
    running = client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'")
    assert [r.data.tags.get("mlflow.runName") for r in running] == []
