"""A throwaway copy of the project (own git repo, smoke params) for end-to-end runs."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# Outputs and local state at the top level only (conf/data and pipeline/data are sources).
TOP_LEVEL_SKIP = {".venv", ".git", "data", "models", "artifacts", "reports", "mlflow.db",
                  "mlartifacts", ".helpers", ".pytest_cache", ".ruff_cache"}
ANYWHERE_SKIP = shutil.ignore_patterns("__pycache__", "*.egg-info")


def _ignore(folder: str, names: list[str]) -> set[str]:
    skipped = set(ANYWHERE_SKIP(folder, names))
    if Path(folder).resolve() == ROOT:
        skipped |= TOP_LEVEL_SKIP & set(names)
    return skipped


def run(cmd: list[str], cwd: Path, env: dict | None = None, check: bool = True, timeout=1800):
    """Run a command with the venv first on PATH (stages call `python`)."""
    base = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    full_env = {**base, "PATH": f"{BIN}{os.pathsep}{base['PATH']}", **(env or {})}
    proc = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def make_project(dest: Path, overrides: list[str]) -> Path:
    shutil.copytree(ROOT, dest, ignore=_ignore)
    (dest / "data" / "real").mkdir(parents=True)
    run([str(BIN / "python"), "-m", "pipeline", "compose", *overrides], dest)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]):
        run(cmd, dest)
    return dest


@pytest.fixture(scope="session")
def smoke_project(tmp_path_factory) -> Path:
    """The project on `experiment=smoke`, after one full `dvc repro`."""
    project = make_project(tmp_path_factory.mktemp("smoke") / "project", ["experiment=smoke"])
    run(["dvc", "repro"], project)
    return project


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1 with its own store; yields its URI."""
    folder = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
         "--artifacts-destination", str(folder / "artifacts"), "--workers", "1"],
        cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as resp:
                if resp.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("mlflow server did not start within 120 s")
    yield uri
    proc.terminate()
    proc.wait(timeout=30)
