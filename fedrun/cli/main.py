"""The ``fedrun`` command: one Hydra entrypoint around :func:`fedrun.runner.run`, inside one error boundary.

Every failure, from a bad override to a full disk or a bug, ends as one sentence on stderr
(``fedrun: error: ...``) with no traceback (:mod:`fedrun.cli.boundary`): exit 2, 3 for divergence,
128+signal for a stop by signal; an unexpected error's full traceback goes to a file the sentence
names. A run that fails before writing any output leaves no run directory (nor ``.hydra/`` or
``cli.log``) behind. In a sweep, a job that fails is logged, gets ``summary.json`` with ``status:
failed`` and its sentence, and the sweep goes on (``fedrun-report`` marks it).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from fedrun.cli import boundary
from fedrun.rundir import lock
from fedrun.rundir.resume import RunFinished
from fedrun.cli.precheck import Prepared, precheck, with_run_dir
from fedrun.config.schema import CONF_DIR, register_configs

log = logging.getLogger("fedrun")

register_configs()


def _fail(message: str, code: int = 2, err: Optional[BaseException] = None) -> None:
    """Print the one sentence and exit; under torchrun only rank 0 prints it (the ranks agree on a
    failure, so rank 0 has it too), except a rank that lost its peers (rank 0 may be the one gone)."""
    dist = _dist()
    if dist is not None and not _writes() and not isinstance(err, dist.PeerLost):
        log.debug("fedrun: %s", message)
        sys.exit(code)
    print(f"fedrun: error: {message}", file=sys.stderr)
    sys.exit(code)


def _job_failed(cfg: DictConfig, run_dir: Path, message: str) -> None:
    """A sweep job's failure on record: ``summary.json`` with status failed (unless the run wrote its own)."""
    from fedrun.rundir.files import write_json_atomic

    from fedrun.rundir.resume import read_summary

    summary = read_summary(run_dir)
    if summary is None or summary.get("status") == "running":
        config = OmegaConf.to_container(cfg, resolve=False)
        write_json_atomic(run_dir / "summary.json", {"status": "failed", "error": message, "rounds_done": 0, "config": config})
    else:
        write_json_atomic(run_dir / "summary.json", {**summary, "error": message})


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _main(cfg: DictConfig) -> Optional[float]:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if not _writes():
        log.setLevel(logging.WARNING)  # rank 0 logs the run; the others only what goes wrong
    created = run_dir != _PREPARED.run_dir or not _PREPARED.existed
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        from fedrun.runner import run  # imported here so `fedrun --help` stays fast

        summary = run(cfg, run_dir)
        return summary.get("final_val_acc", summary.get("final_test_acc"))  # what a sweeper maximises (conf/hparams_search/): validation when there is a split
    except RunFinished as done:
        log.info("fedrun: %s", done)
        return None
    except (KeyboardInterrupt, boundary.Stopped):
        if multirun:  # a stop by signal stops the whole sweep
            raise
        failure: Optional[BaseException] = sys.exc_info()[1]
        message, code = boundary.describe(failure, run_dir)
    except Exception as err:  # noqa: BLE001 - the boundary: every failure is one sentence
        failure = err
        message, code = boundary.describe(err, run_dir)
        if isinstance(err, lock.RunDirLocked):
            _fail(message, code)  # another process's run dir: touch nothing
        if multirun:  # one failed job must not stop the sweep: its summary says failed, the report marks it
            log.error("fedrun: %s", message)
            _job_failed(cfg, run_dir, message)
            _FAILED_JOBS[run_dir] = (message, code)
            return float("nan")
    if _writes():  # rank 0 of several
        boundary.clean_failed_start(run_dir, created)
    _fail(message, code, failure)
    return None


_PREPARED = Prepared([])
_FAILED_JOBS: dict[Path, tuple[str, int]] = {}  # this process's sweep jobs that failed or diverged: sentence, exit code


def _sweep_failures(sweep_dir: Optional[Path]) -> dict[Path, tuple[str, int]]:
    """The sweep's jobs that failed or diverged: those of this process, and (jobs another launcher
    ran in other processes) every job of the sweep dir whose summary says so."""
    from fedrun.rundir.resume import read_summary

    found = dict(_FAILED_JOBS)
    if sweep_dir is not None and Path(sweep_dir).is_dir():
        for summary_path in sorted(Path(sweep_dir).rglob("summary.json")):
            summary = read_summary(summary_path.parent) or {}
            if summary.get("status") in ("failed", "diverged") and summary_path.parent not in found:
                found[summary_path.parent] = (str(summary.get("error") or summary["status"]), 3 if summary["status"] == "diverged" else 2)
    return found


def _report_sweep(sweep_dir: Optional[Path]) -> None:
    """After a sweep: a line per job that failed or diverged, and a non-zero exit (the largest code)."""
    failures = _sweep_failures(sweep_dir)
    _FAILED_JOBS.clear()
    if not failures:
        return
    for run_dir, (message, _) in sorted(failures.items()):
        print(f"fedrun: error: sweep job {run_dir} did not finish: {message}", file=sys.stderr)
    sys.exit(max(code for _, code in failures.values()))


def _dist():  # noqa: ANN202
    """:mod:`fedrun.distributed` when this process is one of several ranks (torchrun's WORLD_SIZE > 1),
    else None; imported only then, since it imports torch."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return None
    from fedrun import distributed

    return distributed


def _writes() -> bool:
    """Whether this process writes the run dir (a single process, or rank 0 of several)."""
    dist = _dist()
    return dist is None or dist.current() is None or dist.current().writer


def main() -> None:
    global _PREPARED
    boundary.install_startup_signals()
    boundary.quiet_logging_errors()
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises its errors: the boundary below words them
    argv = sys.argv[1:]
    held = None
    dist = _dist()  # under torchrun: join the other ranks; rank 0 checks the command line and names the run dir
    leave = dist.teardown if dist is not None else lambda: None
    try:
        try:  # bad overrides, resume decisions and unwritable dirs: one sentence, before Hydra makes a run dir
            ranks = None if dist is None else dist.setup()
            _PREPARED = precheck(argv) if ranks is None else dist.share_precheck(ranks, lambda args: with_run_dir(precheck(args)), argv)
        except RunFinished as done:
            if _writes():
                from fedrun.rundir.finish import complete_finished
                from fedrun.runner import run_plot

                complete_finished(done.run_dir, done.summary, run_plot())  # a missing plot, a leftover checkpoint or state/
            print(f"fedrun: {done}", file=sys.stderr)
            return
        if _PREPARED.run_dir is not None and _writes():
            held = lock.lock_run_dir(_PREPARED.run_dir)  # before Hydra writes .hydra/ and cli.log into it
        sys.argv[1:] = _PREPARED.argv
        _FAILED_JOBS.clear()
        _main()
        if any(a in ("-m", "--multirun") for a in argv) and _writes():
            _report_sweep(_PREPARED.sweep_dir)
    except SystemExit:
        raise
    except BaseException as err:  # noqa: BLE001 - the boundary around everything outside the run itself
        message, code = boundary.describe(err, _PREPARED.run_dir, [a for a in argv if not a.startswith("-")])
        _fail(message, code, err)
    finally:
        if held is not None:
            held.release()
        leave()


if __name__ == "__main__":
    main()
