"""The ``fedrun`` command: one Hydra entrypoint around :func:`fedrun.runner.run`.

Errors the user can fix (:class:`~fedrun.errors.FedrunError`) are printed as one sentence on
stderr, with exit code 2 and no traceback; a run that fails before writing any metrics leaves no
run directory behind.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from fedrun.config import CONF_DIR, register_configs
from fedrun.errors import DivergenceError, FedrunError

log = logging.getLogger("fedrun")

register_configs()


def _fail(message: str, code: int = 2) -> None:
    print(f"fedrun: error: {message}", file=sys.stderr)
    sys.exit(code)


def _finished(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a readable summary.json with status finished (skip_finished=true)."""
    try:
        return json.loads((run_dir / "summary.json").read_text()).get("status") == "finished"
    except (OSError, ValueError, AttributeError):
        return False


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _main(cfg: DictConfig) -> None:
    from fedrun.runner import run  # imported here so `fedrun --help` stays fast

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if cfg.get("skip_finished") and _finished(run_dir):
        log.info("fedrun: skipped, already finished: %s", run_dir)
        return
    try:
        run(cfg, run_dir)
    except DivergenceError as err:
        _fail(str(err), 3)
    except FedrunError as err:
        if not (run_dir / "metrics.csv").exists():
            shutil.rmtree(run_dir, ignore_errors=True)
        _fail(str(err))


def main() -> None:
    _main()


if __name__ == "__main__":
    main()
