"""Checkpoints and resuming: what a run dir holds between runs, and how a run picks up from it.

A checkpoint (``<run dir>/checkpoint.pt``) holds everything a run needs to continue exactly where it
stopped: the server model, every client-state table, the algorithm's server-state dict, every RNG
state (torch CPU and CUDA, numpy, python), the last round done, the metrics rows written so far,
the running counters (communication, the train losses and megabytes of rounds not yet written,
wall seconds so far, the divergence guard's reference loss) and the config. It is written to a
temporary file and renamed over the old one, so a kill at any moment leaves either the old or the
new checkpoint, never a torn one. It is written every ``checkpoint_every`` rounds, and when
SIGINT/SIGTERM arrives (after the round in progress finishes). A run that finishes deletes its
checkpoint (``summary.json`` with ``status: finished`` marks it), because client-state tables can
be large.

``resume`` (top-level key): ``auto`` (default) continues from the run dir's checkpoint when there is
one, says "already finished" (exit 0) for a finished run and starts fresh otherwise; ``true`` does
the same and, when no run dir was named (``hydra.run.dir``), first looks for the most recent run dir
of the same data and algo whose checkpoint (or finished summary) has the same config; ``false``
starts over, deleting the outputs a previous run left in the dir. A config that differs from the
checkpoint's (keys in :data:`IGNORED_KEYS` aside) is refused, naming the keys.
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from fedrun.errors import FedrunError

CHECKPOINT = "checkpoint.pt"
SUMMARY = "summary.json"
METRICS = "metrics.csv"
FORMAT_VERSION = 1
# Keys that may differ between a run and its resumption: they change no result (state_placement only
# moves the client-state tables between GPU, pinned host memory and files: resume after an OOM with it).
IGNORED_KEYS = ("resume", "progress", "checkpoint_every", "targets", "skip_finished", "state_placement")
RESUME_VALUES = ("auto", "true", "false")


class RunFinished(Exception):
    """The run dir already holds a finished run of this config (not an error: exit 0)."""

    def __init__(self, run_dir: Path, summary: dict[str, Any]):
        super().__init__(f"{run_dir} already holds a finished run of this config ({summary.get('rounds_done')} rounds): nothing to do.")
        self.summary = summary


class Interrupted(FedrunError):
    """SIGINT/SIGTERM stopped the run after a checkpoint was written."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


def resume_mode(cfg: DictConfig) -> str:
    value = str(cfg.get("resume", "auto")).lower()
    if value not in RESUME_VALUES:
        raise FedrunError(f"resume={cfg.get('resume')} is not valid: use resume=auto, resume=true or resume=false.")
    return value


# ----------------------------------------------------------------------------------------------
# Config comparison


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def comparable(config: DictConfig | dict) -> dict[str, Any]:
    """The config as a flat ``{dotted key: value}`` dict without hydra's and the ignored keys."""
    if isinstance(config, DictConfig):
        config = OmegaConf.masked_copy(config, [k for k in config.keys() if k != "hydra"])
        config = OmegaConf.to_container(config, resolve=True, enum_to_str=True)
    flat = _flatten({k: v for k, v in config.items() if k != "hydra"})
    return {k: v for k, v in flat.items() if k not in IGNORED_KEYS}


def config_diff(a: DictConfig | dict, b: DictConfig | dict) -> list[str]:
    """Dotted keys whose values differ between two configs (a key missing on one side differs)."""
    fa, fb = comparable(a), comparable(b)
    return sorted(k for k in set(fa) | set(fb) if fa.get(k, "<unset>") != fb.get(k, "<unset>"))


def refuse_message(run_dir: Path, keys: list[str], new: dict[str, Any], old: dict[str, Any]) -> str:
    shown = ", ".join(f"{k} ({old.get(k, 'unset')} there, {new.get(k, 'unset')} now)" for k in keys[:6])
    more = f" and {len(keys) - 6} more" if len(keys) > 6 else ""
    return (
        f"cannot resume {run_dir}: it was run with a different config ({shown}{more}); "
        "rerun with its settings, pick a new hydra.run.dir, or add resume=false to start over in it."
    )


# ----------------------------------------------------------------------------------------------
# What a run dir holds


def read_summary(run_dir: Path) -> Optional[dict[str, Any]]:
    path = Path(run_dir) / SUMMARY
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def load(path: Path) -> dict[str, Any]:
    """Read a checkpoint file; a truncated or foreign file is one clear sentence."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same advice
        raise FedrunError(
            f"{path} cannot be read ({type(err).__name__}): delete it, or add resume=false to start this run dir over."
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT_VERSION:
        raise FedrunError(f"{path} is not a fedrun checkpoint of this version: delete it, or add resume=false to start over.")
    return ckpt


def check_run_dir(cfg: DictConfig, run_dir: Path, clear: bool = True) -> Optional[dict[str, Any]]:
    """Decide what to do with what ``run_dir`` already holds.

    Returns the checkpoint to resume from (or None for a fresh start, after clearing a previous
    run's outputs when ``clear``), raises :class:`RunFinished` for a finished run of the same
    config and :class:`FedrunError` for a config that differs.
    """
    run_dir = Path(run_dir)
    mode = resume_mode(cfg)
    ckpt_path = run_dir / CHECKPOINT
    if mode == "false":
        if clear:
            clear_outputs(run_dir)
        return None
    summary = read_summary(run_dir)
    if ckpt_path.exists():
        ckpt = load(ckpt_path)
        keys = config_diff(cfg, ckpt["config"])
        if keys:
            raise FedrunError(refuse_message(run_dir, keys, comparable(cfg), comparable(ckpt["config"])))
        return ckpt
    if summary is not None and summary.get("config") is not None:
        keys = config_diff(cfg, summary["config"])
        if keys:
            raise FedrunError(refuse_message(run_dir, keys, comparable(cfg), comparable(summary["config"])))
        if summary.get("status") == "finished":
            raise RunFinished(run_dir, summary)
    if clear:
        clear_outputs(run_dir)
    return None


def clear_outputs(run_dir: Path) -> None:
    """Remove what an earlier run wrote into ``run_dir`` (not Hydra's ``.hydra/`` or logs)."""
    for name in (CHECKPOINT, METRICS, SUMMARY, "convergence.png", CHECKPOINT + ".tmp"):
        try:
            (Path(run_dir) / name).unlink()
        except FileNotFoundError:
            pass


def find_resumable(cfg: DictConfig, base: Path) -> Optional[Path]:
    """The most recent run dir under ``base`` with a checkpoint or finished summary of this config."""
    import torch

    candidates: list[tuple[float, Path]] = []
    if not Path(base).is_dir():
        return None
    for run_dir in Path(base).iterdir():
        ckpt, summary = run_dir / CHECKPOINT, run_dir / SUMMARY
        if ckpt.exists():
            try:
                config = torch.load(ckpt, map_location="cpu", weights_only=False, mmap=True)["config"]  # maps, reads little
            except Exception:  # noqa: BLE001 - an unreadable checkpoint is just not a candidate
                continue
            stamp = ckpt.stat().st_mtime
        else:
            content = read_summary(run_dir)
            if not content or content.get("status") != "finished":
                continue
            config, stamp = content.get("config") or {}, summary.stat().st_mtime
        if not config_diff(cfg, config):
            candidates.append((stamp, run_dir))
    return max(candidates)[1] if candidates else None


# ----------------------------------------------------------------------------------------------
# Saving and restoring


def rng_states() -> dict[str, Any]:
    import numpy as np
    import torch

    np_state = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(states["torch"])
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


@dataclass
class Counters:
    """Running totals of the round loop that a resumed run must continue from."""

    round: int = 0
    comm: float = 0.0
    pending: dict[str, Any] = field(default_factory=lambda: {"train_loss": [], "uplink_mb": 0.0, "downlink_mb": 0.0})
    wall_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def save(run_dir: Path, exp: Any, counters: Counters, rows: list[dict[str, Any]]) -> Path:
    """Write ``checkpoint.pt`` atomically (temporary file, fsync, rename)."""
    import torch

    path = Path(run_dir) / CHECKPOINT
    tmp = path.with_name(CHECKPOINT + ".tmp")
    payload = {
        "format": FORMAT_VERSION,
        "round": counters.round,
        "theta": exp.theta,
        "server": dict(exp.server),
        "store": dict(exp.store.items()),
        "rng": rng_states(),
        "rows": list(rows),
        "counters": {"comm": counters.comm, "pending": counters.pending, "wall_s": counters.wall_s, "extra": counters.extra},
        "config": OmegaConf.to_container(exp.cfg, resolve=True, enum_to_str=True),
    }
    with tmp.open("wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def restore(ckpt: dict[str, Any], exp: Any, metrics_path: Path) -> Counters:
    """Put the checkpoint's state into ``exp`` and cut ``metrics.csv`` back to its rows."""
    import torch

    # clone: the checkpoint is memory-mapped (read lazily); the run's own tensors must not alias it
    exp.theta = ckpt["theta"].to(exp.device).clone()
    exp.server = {k: v.to(exp.device).clone() if isinstance(v, torch.Tensor) else v for k, v in ckpt["server"].items()}
    exp.store.load_state_dict(ckpt["store"])
    set_rng_states(ckpt["rng"])
    truncate_metrics(Path(metrics_path), len(ckpt["rows"]))
    c = ckpt["counters"]
    return Counters(ckpt["round"], c["comm"], c["pending"], c["wall_s"], dict(c.get("extra", {})))


def truncate_metrics(path: Path, rows: int) -> None:
    """Keep the header and the first ``rows`` data lines of ``path`` (atomically); none: remove it."""
    if not path.exists():
        if rows:
            raise FedrunError(f"{path} is missing but the checkpoint has {rows} rows: add resume=false to start this run dir over.")
        return
    if rows == 0:
        path.unlink()
        return
    with path.open(newline="") as f:
        lines = f.read().splitlines(keepends=True)
    if len(lines) < rows + 1:
        raise FedrunError(
            f"{path} has {len(lines) - 1} rows but the checkpoint has {rows}: add resume=false to start this run dir over."
        )
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(lines[: rows + 1]))
    os.replace(tmp, path)


def read_metrics(path: Path) -> list[dict[str, str]]:
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))


def remove(run_dir: Path) -> None:
    for name in (CHECKPOINT, CHECKPOINT + ".tmp"):
        try:
            (Path(run_dir) / name).unlink()
        except FileNotFoundError:
            pass


# ----------------------------------------------------------------------------------------------
# Signals


class StopSignals:
    """Turns the first SIGINT/SIGTERM into a flag checked between rounds; a second one stops at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: Optional[int] = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            raise Interrupted(
                f"stopped by a second {signal.Signals(signum).name} before the round finished; "
                "rerun the same command to resume from the last periodic checkpoint.",
                signum,
            )
        self.received = signum

    def install(self) -> None:
        try:
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._old.clear()

    def restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old.clear()


def after_round(cfg: DictConfig, run_dir: Path, exp: Any, counters: Counters, rows: list[dict[str, Any]], signals: StopSignals) -> None:
    """Write the checkpoint when it is due (every ``checkpoint_every`` rounds, or a stop signal came)."""
    every = int(cfg.get("checkpoint_every", 0) or 0)
    last = counters.round >= int(cfg.rounds)
    if signals.received is None:
        if every and counters.round % every == 0 and not last:
            save(run_dir, exp, counters, rows)
        return
    if last:  # the signal came during the last round: just finish
        return
    save(run_dir, exp, counters, rows)
    name = signal.Signals(signals.received).name
    raise Interrupted(
        f"stopped by {name} after round {counters.round} of {cfg.rounds} with a checkpoint in {run_dir}: "
        f"rerun the same command with hydra.run.dir={run_dir} (or resume=true) to continue.",
        signals.received,
    )
