"""What a run dir holds between runs, and what a run does with it.

A run dir holds ``metrics.csv``, ``summary.json``, ``convergence.png``, while the run is unfinished
its ``checkpoint.pt`` (:mod:`fedrun.rundir.checkpoint`) and, for memory-mapped client state, ``state/``.

``resume`` (:class:`~fedrun.config.specs.ResumeSpec`): ``auto`` (default) continues from the run dir's
checkpoint when there is one, says "already finished" (:class:`RunFinished`, exit 0) for a finished
run and starts fresh otherwise; ``true`` does the same and, when no run dir was named, first looks for
the most recent run dir of the same config (:func:`find_resumable`); ``false`` starts over, deleting
the outputs a previous run left. A config that differs from the checkpoint's or the summary's (keys of
:data:`~fedrun.config.schema.NOT_RESULT_KEYS` aside) is refused, naming the keys. ``skip_finished`` says
"already finished" for a finished run whatever its config (a sweep re-run skips its finished runs).

A finished run deletes its checkpoint, then ``state/``; a run that stops keeps ``state/`` only when
its checkpoint refers to the files (:func:`finish`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Optional

from fedrun.rundir.checkpoint import CHECKPOINT, load, state_dir
from fedrun.errors import FedrunError
from fedrun.config.schema import NOT_RESULT_KEYS
from fedrun.config.specs import ResumeSpec

SUMMARY = "summary.json"
METRICS = "metrics.csv"
OUTPUTS = (CHECKPOINT, METRICS, SUMMARY, "convergence.png", CHECKPOINT + ".tmp", "traceback.txt")


class RunFinished(Exception):
    """The run dir already holds a finished run of this config (not an error: exit 0)."""

    def __init__(self, run_dir: Path, summary: dict[str, Any]):
        self.run_dir = Path(run_dir)
        super().__init__(f"{run_dir} already holds a finished run of this config ({summary.get('rounds_done')} rounds): nothing to do.")
        self.summary = summary


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


# Targets that moved when the modules went into stage folders: a run dir written before the move
# names the old path, which is the same function (its checkpoint resumes, its finished run is skipped).
MOVED_TARGETS = {
    "fedrun.partition.": "fedrun.data.partition.",
    "fedrun.models_resnet.": "fedrun.models.resnet.",
}


def _current_target(value: Any) -> Any:
    if isinstance(value, str):
        for old, new in MOVED_TARGETS.items():
            if value.startswith(old):
                return new + value[len(old):]
    return value


def comparable(config: dict[str, Any]) -> dict[str, Any]:
    """The config as a flat ``{dotted key: value}`` dict without hydra's and the not-result keys
    (targets under their current module paths)."""
    flat = _flatten({k: v for k, v in config.items() if k != "hydra"})
    return {k: (_current_target(v) if k.endswith("._target_") else v) for k, v in flat.items() if k not in NOT_RESULT_KEYS}


# Keys added after runs were written, at the value those runs ran with: a run dir whose config lacks
# one counts as having this value (a sweep re-run after an upgrade still skips and resumes its runs).
ADDED_KEYS = {"client_test_fraction": 0.0, "val_fraction": 0.0, "finetune_steps": 0,
              "data_seed": None, "partition_seed": None,
              "lr_schedule": "exponential", "lr_milestones": [0.5, 0.75], "lr_factor": 0.1}


def config_diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two configs (a key missing on one side differs, except
    one of :data:`ADDED_KEYS` at its value)."""
    fa, fb = comparable(a), comparable(b)
    for flat in (fa, fb):
        for key, value in ADDED_KEYS.items():
            flat.setdefault(key, value)
    return sorted(k for k in set(fa) | set(fb) if fa.get(k, "<unset>") != fb.get(k, "<unset>"))


def _refuse_changed(run_dir: Path, new: dict[str, Any], old: dict[str, Any]) -> None:
    keys = config_diff(new, old)
    if not keys:
        return
    fn, fo = comparable(new), comparable(old)
    shown = ", ".join(f"{k} ({fo.get(k, 'unset')} there, {fn.get(k, 'unset')} now)" for k in keys[:6])
    more = f" and {len(keys) - 6} more" if len(keys) > 6 else ""
    raise FedrunError(
        f"cannot resume {run_dir}: it was run with a different config ({shown}{more}); "
        "rerun with its settings, pick a new hydra.run.dir, or add resume=false to start over in it."
    )


def read_summary(run_dir: Path) -> Optional[dict[str, Any]]:
    """The run dir's summary.json, or None when it is missing or is not a summary fedrun wrote."""
    try:
        summary = json.loads((Path(run_dir) / SUMMARY).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or not isinstance(summary.get("status"), str):
        return None
    return summary if isinstance(summary.get("config"), (dict, type(None))) else None


def _unreadable(run_dir: Path, name: str, what: str) -> FedrunError:
    return FedrunError(
        f"{Path(run_dir) / name} {what}, so this run dir cannot be continued: "
        "add resume=false to start it over, or pick another hydra.run.dir."
    )


def decide(spec: ResumeSpec, run_dir: Path, clear: bool = True) -> Optional[dict[str, Any]]:
    """Decide what to do with what ``run_dir`` already holds.

    Returns the checkpoint to resume from, or None for a fresh start (after clearing a previous run's
    outputs when ``clear``); raises :class:`RunFinished` for a finished run of the same config (any
    config with ``skip_finished``) and :class:`FedrunError` for a config that differs.
    """
    run_dir = Path(run_dir)
    if spec.mode == "false":
        if clear:
            clear_outputs(run_dir)
        return None
    summary = read_summary(run_dir)
    if summary is None and (run_dir / SUMMARY).exists():
        raise _unreadable(run_dir, SUMMARY, "is not a summary fedrun wrote (unreadable, or wrong content)")
    if (run_dir / METRICS).exists() and not (run_dir / METRICS).is_file():
        raise _unreadable(run_dir, METRICS, "is not a file")
    finished = summary is not None and summary.get("status") == "finished"
    # a finished run that kept its checkpoint (keep_checkpoint=true), asked for more rounds: continued below
    extend = (finished and not spec.skip_finished and (run_dir / CHECKPOINT).exists()
              and summary.get("config") is not None and config_diff(spec.config, summary["config"]) == ["rounds"])
    if finished and not extend and (spec.skip_finished or summary.get("config") is not None):
        # before the checkpoint: a kill after the summary was written leaves checkpoint.pt behind
        if not spec.skip_finished:
            if config_diff(spec.config, summary["config"]) == ["rounds"]:
                raise FedrunError(f"{run_dir} holds a finished run of {summary['config'].get('rounds')} rounds and no checkpoint to continue from: "
                                  "runs started with keep_checkpoint=true can be extended with a larger rounds=; rerun this one with a new hydra.run.dir.")
            _refuse_changed(run_dir, spec.config, summary["config"])
        raise RunFinished(run_dir, summary)  # the caller completes it (fedrun.rundir.finish.complete_finished)
    if (run_dir / CHECKPOINT).exists():
        ckpt = load(run_dir / CHECKPOINT)
        rounds = int(spec.config.get("rounds", 0))
        if config_diff(spec.config, ckpt["config"]) == ["rounds"] and rounds > int(ckpt["round"]):
            return ckpt  # more rounds: continue (keep_checkpoint=true kept a finished run's checkpoint)
        _refuse_changed(run_dir, spec.config, ckpt["config"])
        if finished and int(ckpt["round"]) >= rounds:
            raise RunFinished(run_dir, summary)
        return ckpt
    if summary is not None and summary.get("config") is not None:
        _refuse_changed(run_dir, spec.config, summary["config"])
    elif (run_dir / METRICS).exists():  # killed before its first checkpoint, config unknown
        raise _unreadable(run_dir, METRICS, "was written by an earlier run that left no checkpoint or summary.json")
    if clear:
        clear_outputs(run_dir)
    return None


def clear_outputs(run_dir: Path) -> None:
    """Remove what an earlier run wrote into ``run_dir`` (not Hydra's ``.hydra/`` or logs)."""
    for name in OUTPUTS:
        path = Path(run_dir) / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    remove_state(run_dir)


def remove_state(run_dir: Path) -> None:
    shutil.rmtree(state_dir(run_dir), ignore_errors=True)


def finish(run_dir: Path, status: str, keep_checkpoint: bool = False) -> None:
    """After the last round: a finished run deletes its checkpoint, then ``state/`` (in that order: a
    kill in between leaves a finished summary and files :func:`decide` removes), unless
    ``keep_checkpoint`` (the run can then be continued with a larger ``rounds=``); a run that stopped
    keeps ``state/`` only when its checkpoint refers to the files."""
    if status == "finished" and keep_checkpoint:
        return
    if status == "finished":
        for name in (CHECKPOINT, CHECKPOINT + ".tmp"):
            (Path(run_dir) / name).unlink(missing_ok=True)
        remove_state(run_dir)
        return
    if not state_dir(run_dir).exists():
        return
    try:
        if (Path(run_dir) / CHECKPOINT).exists() and load(Path(run_dir) / CHECKPOINT, verify=False)["store"].get("files"):
            return
    except FedrunError:  # an unreadable checkpoint: nothing can resume from the files
        pass
    remove_state(run_dir)


def find_resumable(spec: ResumeSpec, base: Path) -> Optional[Path]:
    """The most recent run dir under ``base`` with a checkpoint or finished summary of this config."""
    candidates: list[tuple[float, Path]] = []
    if not Path(base).is_dir():
        return None
    for run_dir in Path(base).iterdir():
        ckpt, summary = run_dir / CHECKPOINT, run_dir / SUMMARY
        if ckpt.exists():
            try:
                config = load(ckpt, verify=False)["config"]  # memory-mapped: reads little (verified on resume)
            except FedrunError:  # an unreadable checkpoint is just not a candidate
                continue
            stamp = ckpt.stat().st_mtime
        else:
            content = read_summary(run_dir)
            if not content or content.get("status") != "finished":
                continue
            config, stamp = content.get("config") or {}, summary.stat().st_mtime
        if not config_diff(spec.config, config):
            candidates.append((stamp, run_dir))
    return max(candidates)[1] if candidates else None
