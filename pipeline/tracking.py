"""The only module that talks to MLflow.

Default: an embedded store, `sqlite:///<repo>/mlflow.db` with artifacts in `<repo>/mlartifacts`
(absolute, because `dvc exp run --queue` runs stages from another folder). Set
MLFLOW_TRACKING_URI to use a team server. One parent run per pipeline run (git commit + params
hash) and one child run per stage execution, tagged with stage, phase, commit and params hash.
"""

from __future__ import annotations

import os
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.config import flatten, params_hash
from pipeline.errors import UserError

# Fail fast instead of MLflow's default minutes of retries against a dead server.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")

DB_FILE = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"


def resolve_uri(root: Path, uri: str | None = None) -> str:
    """$MLFLOW_TRACKING_URI, else the configured uri, else the embedded SQLite store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or uri or f"sqlite:///{(root / DB_FILE).resolve()}"


def check_reachable(uri: str, timeout_s: float) -> None:
    """Raise UserError at once when an http(s) tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s) as resp:
            if resp.status == 200:
                return
            problem = f"HTTP {resp.status}"
    except (urllib.error.URLError, OSError) as exc:
        problem = str(getattr(exc, "reason", exc))
    raise UserError(
        f"MLflow tracking server {uri} is unreachable ({problem}). Start it, or unset "
        "MLFLOW_TRACKING_URI to use the embedded store, or set tracking.enabled=false."
    )


def git_commit(root: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_rank_zero() -> bool:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0


class StageRun:
    """A child MLflow run for one stage; a no-op when tracking is off or on a non-zero rank.

    Use as a context manager: the run is marked FINISHED, or FAILED if the block raises.
    """

    def __init__(self, root: Path, cfg: Mapping[str, Any], stage: str, phase: str | None = None):
        tracking = cfg.get("tracking", {})
        self.enabled = bool(tracking.get("enabled", True)) and _is_rank_zero()
        self.root = root
        self.stage = stage
        self.phase = phase
        self.uri = resolve_uri(root, tracking.get("uri"))
        self.experiment = tracking.get("experiment", "sem-defect-pipeline")
        self.timeout_s = float(tracking.get("connect_timeout_s", 5))
        self.cfg = cfg
        self.run_id: str | None = None
        self.parent_id: str | None = None
        self.experiment_id: str | None = None
        self._client = None

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> StageRun:
        if not self.enabled:
            return self
        check_reachable(self.uri, self.timeout_s)
        from mlflow.tracking import MlflowClient

        self._client = MlflowClient(tracking_uri=self.uri)
        experiment_id = self._experiment_id()
        commit = git_commit(self.root)
        config_hash = params_hash(dict(self.cfg))
        tags = {
            "stage": self.stage,
            "git_commit": commit,
            "params_hash": config_hash,
            "experiment_preset": str(self.cfg.get("experiment_name", "")),
        }
        if self.phase:
            tags["phase"] = self.phase
        parent = self._parent_run(experiment_id, commit, config_hash)
        self.parent_id, self.experiment_id = parent, experiment_id
        name = f"{self.stage}@{self.phase}" if self.phase else self.stage
        self._fail_abandoned_runs(experiment_id)
        run = self._client.create_run(
            experiment_id,
            run_name=name,
            tags={**tags, "mlflow.parentRunId": parent, "mlflow.runName": name,
                  "host": socket.gethostname(), "pid": str(os.getpid())},
        )
        self.run_id = run.info.run_id
        return self

    def _fail_abandoned_runs(self, experiment_id: str) -> None:
        """Mark FAILED the stage runs left RUNNING by killed processes on this host (a
        process that no longer exists cannot finish them)."""
        runs = self._client.search_runs(
            [experiment_id], filter_string=f"attributes.status = 'RUNNING' and "
            f"tags.host = '{socket.gethostname()}'")
        for run in runs:
            pid = int(run.data.tags.get("pid", "0") or 0)
            if pid and not _alive(pid):
                self._client.set_terminated(run.info.run_id, "FAILED")

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.run_id is not None:
            self._client.set_terminated(self.run_id, "FAILED" if exc_type else "FINISHED")

    def _experiment_id(self) -> str:
        found = self._client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        location = None
        if self.uri.startswith("sqlite:"):
            # The embedded store keeps artifacts beside the database, not in the cwd.
            location = (self.root / ARTIFACT_DIR).resolve().as_uri()
        return self._client.create_experiment(self.experiment, artifact_location=location)

    def _parent_run(self, experiment_id: str, commit: str, config_hash: str) -> str:
        key = f"{commit[:12]}-{config_hash}"
        runs = self._client.search_runs(
            [experiment_id], filter_string=f"tags.pipeline_key = '{key}'", max_results=1
        )
        if runs:
            return runs[0].info.run_id
        run = self._client.create_run(
            experiment_id,
            run_name=f"pipeline {key}",
            tags={"pipeline_key": key, "git_commit": commit, "params_hash": config_hash,
                  "experiment_preset": str(self.cfg.get("experiment_name", ""))},
        )
        self._client.log_text(run.info.run_id, _yaml(self.cfg), "config/params.yaml")
        self._client.set_terminated(run.info.run_id, "FINISHED")
        return run.info.run_id

    # -- logging ---------------------------------------------------------------------------
    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log (nested) params flattened to dotted keys, plus the resolved config as a file."""
        if self.run_id is None:
            return
        from mlflow.entities import Param

        flat = sorted((k, str(v)[:6000]) for k, v in flatten(params).items())
        for start in range(0, len(flat), 100):
            batch = [Param(k, v) for k, v in flat[start : start + 100]]
            self._client.log_batch(self.run_id, params=batch)
        self._client.log_text(self.run_id, _yaml(dict(params)), "config/stage_params.yaml")

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if self.run_id is None:
            return
        for key, value in sorted(metrics.items()):
            self._client.log_metric(self.run_id, key, float(value), step=step or 0)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.run_id is not None:
            self._client.log_artifact(self.run_id, str(path), artifact_path)

    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None:
        if self.run_id is not None:
            self._client.log_artifacts(self.run_id, str(folder), artifact_path)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self.run_id is None:
            return
        for key, value in tags.items():
            self._client.set_tag(self.run_id, key, str(value))

    def log_dataset(self, name: str, digest: str, source: str, context: str,
                    profile: Mapping[str, Any] | None = None) -> None:
        """Record an input dataset of this run (MLflow's Datasets column): its name, a
        digest of its content, where it lives and what the run used it for."""
        if self.run_id is None:
            return
        import json

        from mlflow.entities import Dataset, DatasetInput, InputTag

        dataset = Dataset(name=name, digest=digest[:36], source_type="local",
                          source=json.dumps({"uri": str(source)}),
                          profile=json.dumps(dict(profile or {})))
        self._client.log_inputs(self.run_id, datasets=[DatasetInput(
            dataset, tags=[InputTag("mlflow.data.context", context)])])

    def log_model(self, name: str, files: list[Path], *, signature: Mapping[str, Any],
                  label_map: Mapping[int, str], tags: Mapping[str, Any] | None = None
                  ) -> str | None:
        """Log trained model files as an MLflow logged model of this run (the UI's Logged
        models), with its input/output signature and label map; returns the model id."""
        if self.run_id is None:
            return None
        import json
        import shutil
        import tempfile

        from mlflow.entities import LoggedModelOutput

        model = self._client.create_logged_model(
            self.experiment_id, name=name, source_run_id=self.run_id,
            tags={k: str(v) for k, v in (tags or {}).items()},
            params={"signature": json.dumps(dict(signature)),
                    "label_map": json.dumps({str(k): v for k, v in label_map.items()})})
        with tempfile.TemporaryDirectory() as tmp:
            for path in files:
                shutil.copy(path, Path(tmp) / Path(path).name)
            (Path(tmp) / "label_map.json").write_text(json.dumps(
                {str(k): v for k, v in label_map.items()}, indent=2))
            (Path(tmp) / "signature.json").write_text(json.dumps(dict(signature), indent=2))
            self._client.log_model_artifacts(model.model_id, tmp)
        self._client.finalize_logged_model(model.model_id, "READY")
        # The run's output: what the run page lists under "Logged models".
        self._client.log_outputs(self.run_id, [LoggedModelOutput(model.model_id, step=0)])
        return model.model_id

    def register_model(self, name: str, model_id: str, alias: str,
                       tags: Mapping[str, Any] | None = None) -> str | None:
        """Register a logged model as a new version of registered model `name`, with `tags`
        (e.g. the data digests), and point `alias` at it (the newest delivered version)."""
        if self.run_id is None or model_id is None:
            return None
        from mlflow.exceptions import MlflowException

        try:
            self._client.get_registered_model(name)
        except MlflowException:
            self._client.create_registered_model(name)
        source = f"models:/{model_id}"
        version = self._client.create_model_version(
            name, source, run_id=self.run_id, model_id=model_id,
            tags={"phase": self.phase or "", **{k: str(v) for k, v in (tags or {}).items()}})
        self._client.set_registered_model_alias(name, alias, version.version)
        return version.version

    def log_summary(self, metrics: Mapping[str, float]) -> None:
        """Headline figures on the pipeline's parent run, so the runs list compares whole
        pipelines at a glance (per phase: accuracy, flash, arena)."""
        if self.parent_id is None:
            return
        for key, value in sorted(metrics.items()):
            self._client.log_metric(self.parent_id, key, float(value))

    def lightning_logger(self):
        """A Lightning MLFlowLogger that writes into this stage's run (None when disabled)."""
        if self.run_id is None:
            return None
        from lightning.pytorch.loggers import MLFlowLogger

        return MLFlowLogger(
            experiment_name=self.experiment, tracking_uri=self.uri, run_id=self.run_id
        )


def _yaml(tree: Mapping[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(dict(tree), sort_keys=False)
