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

Client-state tables placed on the device or in pinned memory are copied into ``checkpoint.pt``.
Memory-mapped tables (``state_placement=mmap``) are not: a run's mmap tables are durable files in
``<run dir>/state/`` (:data:`STATE_DIR`), and the checkpoint records that the tables are "those
files as of journal epoch ``e``" (``state_files``), so a checkpoint costs an msync of the rows
changed since the previous one, not a copy of the tables. The store's undo journal holds the old
values of every row overwritten since the checkpoint; resuming rolls the files back with it
(:func:`prepare_state_files`, before the store is built). The order of writes, fsyncs and renames
that keeps ``checkpoint.pt`` and the files consistent after a kill at any moment is in
:mod:`fedrun.state`'s docstring; here: ``save`` msyncs the tables, writes ``checkpoint.pt``
(temporary file, fsync, rename, fsync of the run dir) and only then lets the journal start the new
epoch. The placement may change across a resume: a device/pinned run resumed from a files
checkpoint loads the (rolled-back) files into its tables, and its first checkpoint copies the tables
and deletes ``state/``; an mmap run resumed from a checkpoint with copied tables creates new files
and loads the tables into them. ``state/`` is deleted when the run finishes, when it stops without
a checkpoint that refers to it, and when a run dir is started over.

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
import logging
import random
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from fedrun.errors import FedrunError

log = logging.getLogger("fedrun")

CHECKPOINT = "checkpoint.pt"
SUMMARY = "summary.json"
METRICS = "metrics.csv"
STATE_DIR = "state"  # the run's durable memory-mapped client-state files and their journal
FORMAT_VERSION = 2  # 2: mmap client-state tables are referred to (``state_files``), not copied
READABLE_FORMATS = (1, 2)
# Keys that may differ between a run and its resumption: they change no result (state_placement only
# moves the client-state tables between GPU, pinned host memory and files: resume after an OOM with it).
IGNORED_KEYS = ("resume", "progress", "checkpoint_every", "targets", "skip_finished", "state_placement", "threads", "quiet", "logger", "keep_checkpoint")
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


# Keys added to the config after runs were already written, with the value that matches how those
# runs ran: a run dir whose config lacks the key counts as having this value (so a sweep re-run after
# an upgrade still skips its finished runs and resumes its checkpoints).
ADDED_KEYS = {"precision": "fp32", "client_test_fraction": 0.0, "val_fraction": 0.0, "finetune_steps": 0}


def config_diff(a: DictConfig | dict, b: DictConfig | dict) -> list[str]:
    """Dotted keys whose values differ between two configs (a key missing on one side differs,
    except a key of :data:`ADDED_KEYS` at its value)."""
    fa, fb = comparable(a), comparable(b)
    for key, value in ADDED_KEYS.items():
        for flat in (fa, fb):
            flat.setdefault(key, value)
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
    if not isinstance(ckpt, dict) or ckpt.get("format") not in READABLE_FORMATS:
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
        if keys == ["rounds"] and int(cfg.rounds) > int(ckpt["round"]):  # more rounds: continue (keep_checkpoint=true kept a finished run's)
            return ckpt
        if keys:
            raise FedrunError(refuse_message(run_dir, keys, comparable(cfg), comparable(ckpt["config"])))
        if summary is not None and summary.get("status") == "finished" and int(ckpt["round"]) >= int(cfg.rounds):
            raise RunFinished(run_dir, summary)
        return ckpt
    if summary is not None and summary.get("config") is not None:
        keys = config_diff(cfg, summary["config"])
        if keys == ["rounds"] and summary.get("status") == "finished":
            raise FedrunError(f"{run_dir} holds a finished run of {summary['config'].get('rounds')} rounds and no checkpoint to continue from: "
                              "runs started with keep_checkpoint=true can be extended with a larger rounds=; rerun this one with a new hydra.run.dir.")
        if keys:
            raise FedrunError(refuse_message(run_dir, keys, comparable(cfg), comparable(summary["config"])))
        if summary.get("status") == "finished":
            if clear:  # a kill between deleting checkpoint.pt and state/ at the end of the run
                remove_state(run_dir)
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
    remove_state(run_dir)


def state_dir(run_dir: Path) -> Path:
    """Where a run keeps its durable memory-mapped client-state files and their undo journal."""
    return Path(run_dir) / STATE_DIR


def _uses_state_dir(store: Any, run_dir: Path) -> bool:
    """Does ``store`` keep its memory-mapped tables in ``run_dir``'s state directory?"""
    return store.directory is not None and Path(store.directory).resolve() == state_dir(run_dir).resolve()


def remove_state(run_dir: Path) -> None:
    shutil.rmtree(state_dir(run_dir), ignore_errors=True)


def _state_files(run_dir: Path, files: dict[str, Any]) -> dict[str, Path]:
    """The checkpoint's table files, checked to exist with the right size."""
    from fedrun.state import table_path  # fedrun.state imports torch: keep `fedrun --help` fast

    shape = tuple(files["shape"])
    paths = {name: table_path(state_dir(run_dir), name) for name in files["tables"]}
    for path in paths.values():
        size = path.stat().st_size if path.exists() else None
        expected = 4 * shape[0] * shape[1]  # float32
        if size != expected:
            problem = "is missing" if size is None else f"has {size} bytes instead of {expected}"
            raise FedrunError(
                f"{path} {problem} but {Path(run_dir) / CHECKPOINT} refers to it: add resume=false to start this run dir over."
            )
    return paths


def prepare_state_files(run_dir: Path, ckpt: Optional[dict[str, Any]]) -> str:
    """Roll the run's memory-mapped state files back to ``ckpt`` (when it refers to files).

    Returns the ``files`` kind for the run's store: ``reuse`` (map the rolled-back files as they
    are) when the checkpoint refers to files, else ``new``.
    """
    from fedrun.state import JOURNAL_DIR, discard, map_table, roll_back

    if ckpt is None or not ckpt.get("state_files"):
        return "new"
    files = ckpt["state_files"]
    paths = _state_files(run_dir, files)
    shape = tuple(files["shape"])
    maps = {name: map_table(path, shape) for name, path in paths.items()}
    journal = state_dir(run_dir) / JOURNAL_DIR
    try:
        rows = roll_back(journal, {name: table for name, (table, _) in maps.items()}, int(files["epoch"]))
    except Exception as err:  # noqa: BLE001 - a damaged entry (disk fault): the files cannot be trusted
        raise FedrunError(
            f"the client-state journal in {journal} cannot be applied ({type(err).__name__}): "
            "add resume=false to start this run dir over."
        ) from None
    for _, mapped in maps.values():
        mapped.flush()  # the roll-back is on disk before the entries that made it go
    discard(journal)
    if rows:
        log.info("fedrun: rolled %d client-state rows back to the checkpoint of round %d", rows, ckpt["round"])
    return "reuse"


def remove_unused_state(run_dir: Path) -> None:
    """Delete ``state/`` unless ``checkpoint.pt`` refers to its files (a run that stops keeps them)."""
    if not state_dir(run_dir).exists():
        return
    ckpt_path = Path(run_dir) / CHECKPOINT
    try:
        if ckpt_path.exists() and load(ckpt_path).get("state_files"):
            return
    except FedrunError:  # an unreadable checkpoint: nothing can resume from the files
        pass
    remove_state(run_dir)


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
    """Write ``checkpoint.pt`` atomically (temporary file, fsync, rename, fsync of the run dir).

    A store of durable memory-mapped files is flushed and referred to (``state_files``), not copied;
    only once the new checkpoint is durable does its journal start the next epoch.
    """
    import torch

    from fedrun.state import fsync_dir

    path = Path(run_dir) / CHECKPOINT
    tmp = path.with_name(CHECKPOINT + ".tmp")
    store = exp.store
    files = None
    if store.durable:
        if not _uses_state_dir(store, run_dir):
            raise ValueError(f"durable client-state files must live in {state_dir(run_dir)}, not {store.directory}")
        store.flush()  # the files now hold the state after this round
        files = {"epoch": store.journal.epoch + 1, "shape": [store.num_clients, store.num_params], "tables": list(store.tables)}
    payload = {
        "format": FORMAT_VERSION,
        "round": counters.round,
        "theta": exp.theta,
        "server": dict(exp.server),
        "all_models": None if getattr(exp, "all_models", None) is None else exp.all_models.state_dict(),
        "store": {} if files else dict(store.items()),
        "state_files": files,
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
    fsync_dir(Path(run_dir))
    if files:
        store.journal.begin_epoch(files["epoch"])  # the old epoch's entries are no longer needed
    elif not (store.placement == "mmap" and _uses_state_dir(store, run_dir)):
        remove_state(run_dir)  # files of an earlier (mmap) checkpoint, superseded by this one's tables
    return path


def restore(ckpt: dict[str, Any], exp: Any, metrics_path: Path, run_dir: Optional[Path] = None) -> Counters:
    """Put the checkpoint's state into ``exp`` and cut ``metrics.csv`` back to its rows.

    ``run_dir`` (default: the folder of ``metrics_path``) holds the state files of a checkpoint that
    refers to them; they must have been rolled back (:func:`prepare_state_files`) first.
    """
    import torch

    # clone: the checkpoint is memory-mapped (read lazily); the run's own tensors must not alias it
    exp.theta = ckpt["theta"].to(exp.device).clone()
    server = ckpt["server"]  # older checkpoints also kept the mean of all models there ("_" keys)
    exp.server = {k: v.to(exp.device).clone() if isinstance(v, torch.Tensor) else v for k, v in server.items() if not k.startswith("_")}
    saved = ckpt.get("all_models")
    if saved is None and "_initial_model" in server:
        saved = {"initial": server["_initial_model"], "mean": server["_latest_model_mean"]}
    if getattr(exp, "all_models", None) is not None and saved is not None:
        exp.all_models.load_state_dict(saved)
    files = ckpt.get("state_files")
    if files:
        _restore_files(files, exp.store, Path(metrics_path).parent if run_dir is None else Path(run_dir))
    else:
        exp.store.load_state_dict(_upgrade_latest(dict(ckpt["store"]), exp))
    set_rng_states(ckpt["rng"])
    truncate_metrics(Path(metrics_path), len(ckpt["rows"]))
    c = ckpt["counters"]
    return Counters(ckpt["round"], c["comm"], c["pending"], c["wall_s"], dict(c.get("extra", {})))


def _upgrade_latest(tables: dict[str, Any], exp: Any) -> dict[str, Any]:
    """A format-1 checkpoint's ``eval_all`` table (latest models) as the current one (changes from the initial model).

    Format 1 kept every client's latest model in ``_latest_model`` and no initial model (the freshly
    built run has it, from the same seed); it also averaged them plainly for every method, so their
    mean is recomputed with the algorithm's weights (n_k for FedAvg and FedProx).
    """
    if "_latest_model" in tables and getattr(exp, "all_models", None) is not None:
        tables["_latest_delta"] = exp.all_models.from_latest_models(tables.pop("_latest_model"))
    return tables


def _restore_files(files: dict[str, Any], store: Any, run_dir: Path) -> None:
    """The store's tables from the checkpoint's files: the files themselves, or loaded into its tables."""
    from fedrun.state import map_table

    paths = _state_files(run_dir, files)
    shape = tuple(files["shape"])
    if shape != (store.num_clients, store.num_params):
        raise FedrunError(f"{run_dir / CHECKPOINT} has client-state tables of shape {shape}: add resume=false to start this run dir over.")
    if store.durable and _uses_state_dir(store, run_dir):
        missing = set(paths) - set(store.tables)
        if missing or store.files != "reuse":
            raise ValueError(f"the store must reuse the checkpoint's files {sorted(paths)} (missing: {sorted(missing)})")
        store.journal.epoch = int(files["epoch"])  # rows written from now on lead back to this checkpoint
        return
    for name, path in paths.items():  # another placement (or files elsewhere): load the files' tables
        table, _ = map_table(path, shape, writable=False)
        store.load_state_dict({name: table})


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
    """Delete a finished run's checkpoint, then its state files (in that order: see :func:`check_run_dir`)."""
    for name in (CHECKPOINT, CHECKPOINT + ".tmp"):
        try:
            (Path(run_dir) / name).unlink()
        except FileNotFoundError:
            pass
    remove_state(run_dir)


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
