"""What a killed or failed stage leaves behind: MLflow runs, temporary files, work folders."""

import os
import signal
import subprocess
import sys

from mlflow.tracking import MlflowClient

from pipeline.files import atomic_dir, atomic_path, scratch_dir
from pipeline.tracking import StageRun


def _cfg() -> dict:
    return {"tracking": {"enabled": True, "experiment": "t"}, "experiment_name": "smoke"}


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_killed_stages_running_run_is_failed_when_a_stage_runs_next(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    killed = StageRun(tmp_path, _cfg(), "split").__enter__()  # never exited: the process died
    client = MlflowClient(tracking_uri=killed.uri)
    client.set_tag(killed.run_id, "pid", str(_dead_pid()))
    alive = StageRun(tmp_path, _cfg(), "synthesize").__enter__()  # still going
    with StageRun(tmp_path, _cfg(), "train_teacher") as again:
        assert client.get_run(killed.run_id).info.status == "FAILED"
        assert client.get_run(alive.run_id).info.status == "RUNNING"
        assert client.get_run(again.run_id).data.tags["pid"] == str(os.getpid())
    assert client.get_run(again.run_id).info.status == "FINISHED"


def test_the_next_write_removes_temporaries_a_killed_write_left(tmp_path):
    target = tmp_path / "metrics.json"
    (tmp_path / ".metrics.json.abc123.tmp").write_text("half")
    (tmp_path / ".out.xyz.tmp").mkdir()
    (tmp_path / ".out.xyz.tmp" / "part.png").write_bytes(b"half")
    with atomic_path(target) as tmp:
        tmp.write_text("{}")
    with atomic_dir(tmp_path / "out") as folder:
        (folder / "a.txt").write_text("a")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "out"]


def test_scratch_work_is_cleared_before_and_after(tmp_path):
    leftover = tmp_path / ".artifacts.work"
    leftover.mkdir()
    (leftover / "model_edge.onnx").write_bytes(b"old")
    with scratch_dir(tmp_path / "artifacts") as work:
        assert work == leftover and not any(work.iterdir())
        (work / "new").write_bytes(b"x")
    assert not leftover.exists()


def test_sigterm_unwinds_a_stage_like_a_failure(tmp_path):
    """The stage's context managers run: the temporary file is gone, the target untouched."""
    code = f"""
import signal, time
from pathlib import Path
from pipeline.__main__ import _terminated
from pipeline.files import atomic_path
signal.signal(signal.SIGTERM, _terminated)
with atomic_path(Path({str(tmp_path / 'out.bin')!r})) as tmp:
    tmp.write_bytes(b"partial")
    print("writing", flush=True)
    time.sleep(30)
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 128 + signal.SIGTERM
    assert list(tmp_path.iterdir()) == []


def test_temporary_files_go_to_the_scratch_folder_for_the_block(tmp_path):
    import tempfile

    from pipeline.files import temporary_files_in

    before = tempfile.gettempdir()
    with temporary_files_in(tmp_path):
        with tempfile.TemporaryDirectory() as inner:
            assert inner.startswith(str(tmp_path))
        child = subprocess.run([sys.executable, "-c", "import tempfile; print(tempfile.gettempdir())"],
                               capture_output=True, text=True).stdout.strip()
        assert child == str(tmp_path)
    assert tempfile.gettempdir() == before and os.environ.get("TMPDIR") != str(tmp_path)


def test_a_stage_start_clears_what_killed_stages_left_anywhere(tmp_path):
    from pipeline.files import remove_stale_temporaries

    (tmp_path / "data/.synthetic.abc.tmp").mkdir(parents=True)
    (tmp_path / "models/teacher/.model.work").mkdir(parents=True)
    (tmp_path / "reports/models").mkdir(parents=True)
    (tmp_path / "reports/models/.teacher.json.x1.tmp").write_text("{")
    (tmp_path / "reports/models/teacher.json").write_text("{}")
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf/.keep.tmp").write_text("")  # outside the output folders: untouched
    remove_stale_temporaries(tmp_path, ("data", "models", "artifacts", "reports"))
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == ["conf/.keep.tmp", "reports/models/teacher.json"]
    assert not (tmp_path / "data/.synthetic.abc.tmp").exists()
