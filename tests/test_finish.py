"""Issue 15, section 3: the last moments of a run. convergence.png is written whole before
summary.json, which is written last; a kill anywhere in that window loses nothing: the same command
resumes from the checkpoint (kill before the summary) or, for a finished run, writes a missing plot
and removes a leftover checkpoint and ``state/`` (kill after it).

In process, a kill is an exception that no ``except Exception`` stops (as SIGKILL is stopped by
nothing); the real SIGKILLs of a ``python -m fedrun`` process are the slow test at the end.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fedrun import runner
from fedrun.rundir import checkpoint, finish, resume
from conftest import compose_config
from tests.test_errors import TINY

MMAP = [*TINY, "checkpoint_every=2", "state_placement=mmap"]  # checkpoint after round 2; state/ holds files


@pytest.fixture(autouse=True)
def draw_figures(monkeypatch):
    """These tests are about the figure: draw it (tests/conftest.py skips it in other tests)."""
    from fedrun.observers import plot as plots

    monkeypatch.setattr(runner, "convergence_plot", plots.convergence_plot)


class Killed(BaseException):
    pass


def kill_at(monkeypatch, target, name):
    def die(*args, **kwargs):
        raise Killed(name)

    monkeypatch.setattr(target, name, die)


def outputs(run_dir: Path) -> dict:
    return {
        "summary": json.loads((run_dir / "summary.json").read_text())["status"],
        "plot": (run_dir / "convergence.png").exists(),
        "checkpoint": (run_dir / "checkpoint.pt").exists(),
        "state": checkpoint.state_dir(run_dir).exists(),
    }


def test_summary_is_written_after_the_plot(monkeypatch, tmp_path):
    order = []
    real_plot, real_json = finish.write_plot, finish.write_json_atomic
    monkeypatch.setattr(finish, "write_plot", lambda *a: (order.append("plot"), real_plot(*a)))
    monkeypatch.setattr(finish, "write_json_atomic", lambda path, p: (order.append(p["status"]), real_json(path, p)))
    monkeypatch.setattr(resume, "finish", lambda run_dir, status, *a, real=resume.finish: (order.append("remove"), real(run_dir, status, *a)))
    runner.run(compose_config(*MMAP), tmp_path)
    assert order == ["running", "plot", "finished", "remove"]


def test_kill_before_the_summary_resumes_and_finishes(monkeypatch, tmp_path):
    cfg = compose_config(*MMAP)
    with monkeypatch.context() as mp:
        kill_at(mp, finish, "write_plot")
        with pytest.raises(Killed):
            runner.run(cfg, tmp_path)
    assert outputs(tmp_path) == {"summary": "running", "plot": False, "checkpoint": True, "state": True}
    summary = runner.run(cfg, tmp_path)  # resumes from round 2's checkpoint
    assert summary["status"] == "finished" and summary["rounds_done"] == 4
    assert outputs(tmp_path) == {"summary": "finished", "plot": True, "checkpoint": False, "state": False}


def test_kill_after_the_summary_then_rerun_completes_the_finished_run(monkeypatch, tmp_path):
    cfg = compose_config(*MMAP)
    with monkeypatch.context() as mp:
        kill_at(mp, resume, "finish")
        with pytest.raises(Killed):
            runner.run(cfg, tmp_path)
    assert outputs(tmp_path) == {"summary": "finished", "plot": True, "checkpoint": True, "state": True}
    (tmp_path / "convergence.png").unlink()  # as an older fedrun, which plotted after the summary, could leave it
    with pytest.raises(resume.RunFinished):
        runner.run(cfg, tmp_path)
    assert outputs(tmp_path) == {"summary": "finished", "plot": True, "checkpoint": False, "state": False}


DRIVER = textwrap.dedent(
    """
    import os, signal, sys
    from fedrun.rundir import finish, resume
    from fedrun.cli.main import main

    target, name = {"plot": (finish, "write_plot"), "summary": (resume, "finish")}[sys.argv[1]]
    setattr(target, name, lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL))
    sys.argv = ["fedrun", *sys.argv[2:]]
    main()
    """
)


@pytest.mark.slow  # four processes
def test_sigkill_in_the_finishing_window_then_the_same_command(tmp_path):
    for point in ("plot", "summary"):
        run_dir = tmp_path / point
        args = [*MMAP, f"hydra.run.dir={run_dir}"]
        killed = subprocess.run([sys.executable, "-c", DRIVER, point, *args], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        assert checkpoint.state_dir(run_dir).exists()
        again = subprocess.run([sys.executable, "-m", "fedrun", *args], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr[-2000:]
        assert ("nothing to do" in again.stderr) == (point == "summary")
        assert outputs(run_dir) == {"summary": "finished", "plot": True, "checkpoint": False, "state": False}
