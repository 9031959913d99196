"""The CLI's one error boundary: every way a run can fail becomes one sentence and an exit code.

:func:`describe` maps an exception to ``(sentence, exit code)``:

* :class:`~fedrun.errors.FedrunError`: its own sentence, its exit code (2; 3 for divergence;
  128+signal for a stop by signal);
* a signal outside the round loop (Ctrl-C or SIGTERM during start-up; :class:`Stopped`): 128+signal;
* a full disk or another failed file operation (``OSError`` with a file name): what could not be
  written and what to do, exit 2;
* running out of memory: exit 2, naming the knobs that shrink a run;
* a Hydra/OmegaConf composition error that the pre-check did not see: its one-sentence translation;
* anything else (a bug): exit 2, with the full traceback written to ``<run dir>/traceback.txt``
  (or a temporary file when no run dir exists yet) and the sentence saying where.

:func:`clean_failed_start` removes what a run that failed before writing any output left in a run
dir it created (Hydra's ``.hydra/`` and ``cli.log``, the lock file).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import tempfile
import traceback
from pathlib import Path
from typing import Any, Optional

from fedrun.errors import FedrunError, disk_error, os_error_in

log = logging.getLogger("fedrun")

TRACEBACK = "traceback.txt"
OUTPUTS = ("metrics.csv", "checkpoint.pt", "summary.json")


class Stopped(BaseException):
    """SIGTERM (or SIGINT) outside the round loop: start-up, or between runs of a sweep."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def quiet_logging_errors() -> None:
    """A log handler that cannot write (``cli.log`` on a full disk) drops the record instead of
    printing logging's own traceback: the failure that matters reaches the boundary as one sentence."""
    logging.raiseExceptions = False


def _raise_stopped(signum: int, frame: Any) -> None:
    raise Stopped(signum)


def install_startup_signals() -> None:
    """SIGTERM stops start-up with a sentence instead of killing the process without one."""
    try:
        signal.signal(signal.SIGTERM, _raise_stopped)
    except ValueError:  # not the main thread
        pass


def _short(err: BaseException) -> str:
    text = str(err).strip().split("\n", 1)[0].rstrip(".")
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def write_traceback(err: BaseException, run_dir: Optional[Path]) -> Optional[Path]:
    """The full traceback of ``err`` in ``run_dir`` (or a temporary file); returns where, or None
    when neither can be written (a full or read-only disk)."""
    text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    if run_dir is not None:
        path = Path(run_dir) / TRACEBACK
        try:
            path.write_text(text)
            return path
        except OSError:  # a cut traceback is no use: the temporary folder may have room
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass
    try:
        fd, name = tempfile.mkstemp(prefix="fedrun-traceback-", suffix=".txt")
        with os.fdopen(fd, "w") as f:
            f.write(text)
    except OSError:
        return None
    return Path(name)


def _disk(err: OSError, run_dir: Optional[Path] = None) -> str:
    where = err.filename or (f"a file in {run_dir}" if run_dir else "a file")
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return (
            f"the disk is full (no space left while writing {where}): free space there or pick another "
            "hydra.run.dir, then rerun the same command (it continues from the last checkpoint)."
        )
    reason = err.strerror or type(err).__name__
    return f"{where} could not be written or read ({reason}): check that path, or pick another hydra.run.dir or data.root."


def describe(err: BaseException, run_dir: Optional[Path] = None, overrides: Optional[list[str]] = None) -> tuple[str, int]:
    """(one sentence, exit code) for ``err`` (see the module docstring)."""
    if isinstance(err, FedrunError):
        return str(err), int(getattr(err, "exit_code", 3 if type(err).__name__ == "DivergenceError" else 2))
    if isinstance(err, (Stopped, KeyboardInterrupt)):
        signum = getattr(err, "signum", signal.SIGINT)
        name = signal.Signals(signum).name
        return (
            f"stopped by {name} before the run's rounds began or after they ended; nothing was lost: "
            "rerun the same command to start (or finish) it.",
            128 + signum,
        )
    if isinstance(err, OSError) and (err.filename or err.errno in (errno.ENOSPC, errno.EDQUOT)):
        return _disk(err, run_dir), 2
    found = os_error_in(err)  # a full disk behind another exception (torch's serializer: a RuntimeError)
    if found is not None:
        return str(disk_error(found.filename or (Path(run_dir) if run_dir else "a file"), found)), 2
    if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError":
        return (
            "the run ran out of memory: lower num_clients, model size, engine.chunk_size or batch_size, "
            "or use state_placement=mmap.",
            2,
        )
    translated = _composition(err, overrides or [])
    if translated is not None:
        return translated, 2
    path = write_traceback(err, run_dir)
    where = f"the full traceback is in {path}" if path else "its traceback could not be written (no space or no permission in the run dir nor in the temporary folder)"
    return f"unexpected error ({_short(err)}); this is a bug or an unsupported setup, {where}.", 2


def _composition(err: BaseException, overrides: list[str]) -> Optional[str]:
    """The sentence for a Hydra/OmegaConf error the pre-check did not catch, or None."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(err, (HydraException, OmegaConfBaseException)) or isinstance(err.__cause__, OmegaConfBaseException):
        from fedrun.cli.precheck import translate

        return str(translate(err, overrides))
    return None


def has_outputs(run_dir: Path) -> bool:
    return any((Path(run_dir) / name).exists() for name in OUTPUTS)


def clean_failed_start(run_dir: Path, created: bool) -> None:
    """After a failure before any output: remove the run dir this command created (keeping only a
    traceback file, if one was written), or nothing when it existed before."""
    run_dir = Path(run_dir)
    if not created or not run_dir.exists() or has_outputs(run_dir):
        return
    if not (run_dir / TRACEBACK).exists():
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    for path in run_dir.iterdir():
        if path.name != TRACEBACK:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
