"""The ``fedrun`` command: one Hydra entrypoint around :func:`fedrun.runner.run`.

Errors the user can fix (:class:`~fedrun.errors.FedrunError`) are printed as one sentence on
stderr, with exit code 2 and no traceback; a run that fails before writing any metrics leaves no
run directory behind.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from fedrun.cli_errors import Prepared, precheck
from fedrun.config import CONF_DIR, register_configs
from fedrun.errors import DivergenceError, FedrunError
from fedrun.rundir import RunFinished

log = logging.getLogger("fedrun")

register_configs()


def _fail(message: str, code: int = 2) -> None:
    print(f"fedrun: error: {message}", file=sys.stderr)
    sys.exit(code)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _main(cfg: DictConfig) -> Optional[float]:
    from fedrun.runner import run  # imported here so `fedrun --help` stays fast

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if not _writes():
        log.setLevel(logging.WARNING)  # rank 0 logs the run; the others only what goes wrong
    try:
        summary = run(cfg, run_dir)
        return summary.get("final_val_acc", summary.get("final_test_acc"))  # what a sweeper maximises (fedrun/conf/hparams_search/): validation when there is a split
    except RunFinished as done:
        log.info("fedrun: %s", done)
    except DivergenceError as err:
        if HydraConfig.get().mode == RunMode.MULTIRUN:  # one diverged run must not stop the sweep:
            log.error("fedrun: %s", err)  # its summary.json says diverged, fedrun-report marks it
            return float("nan")
        _fail(str(err), 3)
    except FedrunError as err:
        kept = ("metrics.csv", "checkpoint.pt", "summary.json")
        if _writes() and (run_dir != _PREPARED.run_dir or not _PREPARED.existed):  # rank 0 of several
            if not any((run_dir / name).exists() for name in kept):
                shutil.rmtree(run_dir, ignore_errors=True)
        _fail(str(err), getattr(err, "exit_code", 2))


_PREPARED = Prepared([])


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


def _precheck(argv: list[str]) -> Prepared:
    try:
        return precheck(argv)
    except (RunFinished, FedrunError):
        raise
    except Exception:  # noqa: BLE001 - a case the pre-check does not know: let Hydra report it
        return Prepared(argv)


def main() -> None:
    global _PREPARED
    dist = _dist()  # under torchrun: join the other ranks; rank 0 checks the command line and names the run dir
    leave = dist.teardown if dist is not None else lambda: None
    try:  # bad overrides, resume decisions and unwritable dirs: one sentence, before Hydra makes a run dir
        ranks = None if dist is None else dist.setup()
        _PREPARED = _precheck(sys.argv[1:]) if ranks is None else dist.share_precheck(ranks, _precheck, sys.argv[1:])
    except RunFinished as done:
        print(f"fedrun: {done}", file=sys.stderr)
        return leave()
    except FedrunError as err:
        leave()
        _fail(str(err))
    sys.argv[1:] = _PREPARED.argv
    try:
        _main()
    finally:
        leave()


if __name__ == "__main__":
    main()
