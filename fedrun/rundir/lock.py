"""One process per run dir: an exclusive lock held for the whole run.

:func:`lock_run_dir` takes an exclusive ``flock`` on ``<run dir>/run.lock`` (created if needed) and
writes the holder's pid and host into it. The kernel drops the lock when the holder's process
dies, however it dies (SIGKILL included), so a lock file left by a dead process is simply taken
over; a holder that ended normally empties the file, so a pid found in it is a process that died
holding the lock, and the take-over is logged. A second process that finds the lock held gets
:class:`RunDirLocked`: one sentence naming the holder, exit code 2.

Within one process the lock is re-entrant: the CLI takes it before Hydra writes anything into a
named run dir, and :func:`fedrun.runner.run` takes it again (for runs started from Python and sweep
jobs); it is given back when the outermost holder releases it.

The lock file stays in the run dir after the run (removing a file that others may be about to
lock would let two processes hold "the" lock on different files); it holds no results.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import threading
from pathlib import Path

from fedrun.errors import FedrunError, disk_error, os_error_in, writing

log = logging.getLogger("fedrun")

LOCK_FILE = "run.lock"


class RunDirLocked(FedrunError):
    """Another live process holds the run dir's lock."""


def holder(run_dir: Path) -> str:
    """``pid 123 on host`` as recorded in the lock file (or ``an unknown process``)."""
    try:
        text = (Path(run_dir) / LOCK_FILE).read_text().split()
    except OSError:
        text = []
    return f"pid {text[0]} on {text[1]}" if len(text) >= 2 else "an unknown process"


class RunDirLock:
    """One hold of a run dir's lock; release() (or the process's end) gives it back."""

    def __init__(self, key: Path, held: bool = True):
        self.key = key
        self._held = held

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        entry = _HELD.get(self.key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            handle = _HELD.pop(self.key)[0]
            try:
                handle.seek(0)
                handle.truncate()  # an empty lock file: its last holder ended normally
                handle.flush()
            except OSError:  # the run dir went away (a failed start removed it)
                pass
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            handle.close()

    def __enter__(self) -> "RunDirLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# run dir (resolved) -> [open lock file holding the flock, number of holds in this process, the holding thread]
_HELD: dict[Path, list] = {}


def held(run_dir: Path) -> bool:
    """Whether this process holds ``run_dir``'s lock."""
    return Path(run_dir).resolve() in _HELD


def lock_run_dir(run_dir: Path) -> RunDirLock:
    """Take ``run_dir``'s lock (creating the dir) or raise :class:`RunDirLocked` with one sentence."""
    run_dir = Path(run_dir)
    with writing(run_dir):
        run_dir.mkdir(parents=True, exist_ok=True)
    key = run_dir.resolve()
    if key in _HELD:
        if _HELD[key][2] != threading.get_ident():  # re-entrant within a thread, not across threads
            raise RunDirLocked(
                f"{run_dir} is in use by another fedrun run in this process (another thread): wait for it to end, "
                "or pick another run dir."
            )
        _HELD[key][1] += 1
        return RunDirLock(key)
    try:
        handle = open(run_dir / LOCK_FILE, "a+")
    except OSError as err:
        if err.errno != errno.EROFS:
            raise disk_error(run_dir / LOCK_FILE, err) if os_error_in(err) else err
        return RunDirLock(key, held=False)  # a read-only filesystem: no run can write there, nothing to guard
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise RunDirLocked(
            f"{run_dir} is in use by another fedrun run ({holder(run_dir)}): wait for it to end, "
            "or pick another hydra.run.dir."
        ) from None
    handle.seek(0)
    previous = handle.read().split()
    me = [str(os.getpid()), socket.gethostname()]
    if len(previous) >= 2 and previous != me:
        log.info("fedrun: took over the lock of %s left by pid %s on %s, which has ended", run_dir, previous[0], previous[1])
    try:
        with writing(run_dir / LOCK_FILE, 4096):
            handle.seek(0)
            handle.truncate()
            handle.write(" ".join(me) + "\n")
            handle.flush()
    except BaseException:
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        handle.close()
        raise
    _HELD[key] = [handle, 1, threading.get_ident()]
    return RunDirLock(key)
