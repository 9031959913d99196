"""One process per run dir: the lock file, its holder, a stale lock taken over, a second run refused.

The two-runs-at-once case runs two real ``python -m fedrun`` processes on one run dir; the rest is
in process (another holder is an ``flock`` on another open file of the lock, as another process's is).
"""

from __future__ import annotations

import csv
import fcntl
import logging
import os
import socket
import subprocess
import sys
import time

import pytest

from fedrun import runner
from fedrun.rundir import lock
from conftest import compose_config
from tests.test_errors import TINY


def test_lock_file_names_the_holder_and_is_emptied_on_release(tmp_path):
    held = lock.lock_run_dir(tmp_path / "run")
    assert (tmp_path / "run" / "run.lock").read_text().split() == [str(os.getpid()), socket.gethostname()]
    again = lock.lock_run_dir(tmp_path / "run")  # re-entrant within the process (CLI, then runner.run)
    again.release()
    assert lock.held(tmp_path / "run")
    held.release()
    assert not lock.held(tmp_path / "run") and (tmp_path / "run" / "run.lock").read_text() == ""


def test_a_live_holder_refuses_a_second_run_with_one_sentence(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.lock").write_text("4242 otherhost\n")
    other = open(run_dir / "run.lock")  # another process's hold
    fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        with pytest.raises(lock.RunDirLocked) as err:
            runner.run(compose_config(*TINY), run_dir)
        assert str(err.value) == (
            f"{run_dir} is in use by another fedrun run (pid 4242 on otherhost): wait for it to end, or pick another hydra.run.dir."
        )
        assert sorted(p.name for p in run_dir.iterdir()) == ["run.lock"]  # nothing written
    finally:
        other.close()


def test_stale_lock_of_a_dead_process_is_taken_over_and_said(tmp_path, caplog):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.lock").write_text("4242 otherhost\n")  # its holder was SIGKILLed: the kernel dropped the flock
    with caplog.at_level(logging.INFO, logger="fedrun"):
        held = lock.lock_run_dir(run_dir)
    held.release()
    assert f"took over the lock of {run_dir} left by pid 4242 on otherhost, which has ended" in caplog.text


@pytest.mark.slow  # two real processes racing (7 s); make test keeps the in-process refusal tests above
def test_two_runs_started_at_once_on_one_dir(tmp_path):
    """One runs all 12 rounds; the other is refused with one sentence and exit 2; metrics.csv has
    rounds 1..12 once each, in order."""
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "fedrun", *TINY, "rounds=12", f"hydra.run.dir={run_dir}"]
    procs = [subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], [o[1][-2000:] for o in outs]
    refused = outs[[p.returncode for p in procs].index(2)][1]
    assert "Traceback" not in refused
    line = refused.strip().splitlines()[-1]
    assert line.startswith(f"fedrun: error: {run_dir} is in use by another fedrun run (pid ")
    with (run_dir / "metrics.csv").open(newline="") as f:
        assert [int(r["round"]) for r in csv.DictReader(f)] == list(range(1, 13))
