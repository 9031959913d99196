"""Checkpoints of memory-mapped client state refer to the run's files instead of copying them.

In-process: a checkpoint of an mmap store holds no table data; the undo journal rolls the files
back to the checkpoint exactly (rows written once or twice since, bitwise -0.0 rows, never-written
rows), also after a crash inside the journal write, inside the checkpoint (before and after its
rename) and inside the roll-back itself; a resume keeps the checkpoint's placement or is refused.

Real processes (``python -m fedrun``, SIGKILL from outside at a random moment or from inside at a
chosen line of the journal/checkpoint code): FedDyn and SCAFFOLD with ``state_placement=mmap`` and
partial participation, killed again and again and resumed, write the metrics.csv of an
uninterrupted run; a resumption with another placement is refused in one sentence.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import pytest
import torch
from fedrun.rundir import checkpoint
from fedrun.state import journal
from fedrun.errors import FedrunError
from fedrun.state.store import MmapStore, TensorStore
from test_resume import ARGS, ROUNDS, command, metrics_without_wall, needs, reference, rows_in, wait_for_rows  # noqa: F401

CPU = torch.device("cpu")


# ----------------------------------------------------------------------------------------------
# In-process: a store, a checkpoint of it, a crash, a roll-back


def new_store(run_dir: Path, m: int, p: int, reuse: bool = False, names=("a", "b")) -> MmapStore:
    store = MmapStore(m, p, CPU, checkpoint.state_dir(run_dir), reuse)
    for name in names:
        store.add(name)
    return store


def experiment(store) -> SimpleNamespace:
    """The parts of an :class:`~fedrun.runner.Experiment` that checkpoint.save/restore use."""
    spec = SimpleNamespace(config={"algo": "test", "num_clients": store.num_clients})
    return SimpleNamespace(theta=torch.arange(3.0), server={"h": torch.ones(3)}, store=store, spec=spec, device=CPU)


def save(run_dir: Path, store, round_: int) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    return checkpoint.save(run_dir, experiment(store), checkpoint.Counters(round=round_), [])


def resume(run_dir: Path, m: int, p: int, names=("a", "b")) -> MmapStore:
    """What a resumed run does: roll the files back, build its store, restore the checkpoint into it."""
    ckpt = checkpoint.load(run_dir / checkpoint.CHECKPOINT)
    store = new_store(run_dir, m, p, checkpoint.roll_back_files(run_dir, ckpt), names)
    checkpoint.restore(ckpt, experiment(store))
    return store


def bits(store: ClientStateStore) -> dict[str, torch.Tensor]:
    """The tables' bit patterns (so -0.0 and 0.0 differ)."""
    return {name: table.clone().view(torch.int32) for name, table in store.items()}


def assert_same_bits(store: ClientStateStore, expected: dict[str, torch.Tensor]) -> None:
    assert set(store.tables) == set(expected)
    for name, table in store.items():
        assert torch.equal(table.view(torch.int32), expected[name]), name


def entries_in(run_dir: Path) -> list[str]:
    folder = checkpoint.state_dir(run_dir) / journal.JOURNAL_DIR
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def rows(k: int, p: int, value: float) -> torch.Tensor:
    return value + torch.arange(k * p, dtype=torch.float32).reshape(k, p)


def test_checkpoint_of_an_mmap_store_holds_no_tables(tmp_path: Path) -> None:
    m, p = 64, 100_000  # two 25.6 MB tables
    table_bytes = 2 * 4 * m * p
    mapped = new_store(tmp_path / "mmap", m, p)
    mapped.set("a", torch.tensor([3, 40]), rows(2, p, 1.0))
    mapped.set("b", torch.tensor([7]), rows(1, p, -2.0))
    path = save(tmp_path / "mmap", mapped, 2)
    assert path.stat().st_size < 64_000 < table_bytes  # a few KB: theta, RNG states, config
    ckpt = checkpoint.load(path)
    sums = ckpt["store"]["files"].pop("sums")  # each row's CRC-32 (8 bytes a row, not the row)
    assert ckpt["store"] == {"placement": "mmap", "files": {"epoch": 1, "shape": [m, p], "tables": ["a", "b"]}}
    assert torch.equal(sums["a"], journal.row_sums(mapped.tables["a"])) and len(set(sums["b"].tolist())) == 2
    assert entries_in(tmp_path / "mmap") == []  # the checkpoint starts a new epoch: older entries go
    # the same store on the device is copied into the checkpoint (so the size check above can fail)
    device = TensorStore(m, p, CPU)
    device.add("a"), device.add("b")
    assert save(tmp_path / "device", device, 2).stat().st_size > table_bytes


def test_roll_back_to_the_checkpoint_is_exact(tmp_path: Path) -> None:
    m, p = 10, 7
    store = new_store(tmp_path, m, p)
    store.set("a", torch.tensor([1, 3]), torch.stack([torch.full((p,), -0.0), torch.full((p,), 2.5)]))
    store.set("b", torch.tensor([0]), rows(1, p, 9.0))
    save(tmp_path, store, 2)
    expected = bits(store)
    assert torch.equal(expected["a"][1], torch.full((p,), -0.0).view(torch.int32))  # -0.0, not 0.0
    # after the checkpoint: rows written once, twice, rows never written before, both tables
    store.set("a", torch.tensor([3, 5]), rows(2, p, 100.0))
    store.set("a", torch.tensor([5, 1]), rows(2, p, 200.0))
    store.set("b", torch.tensor([9, 0]), rows(2, p, 300.0))
    store.set("a", torch.tensor([3]), rows(1, p, 400.0))
    # each row's old value is journaled once: a{3,5}, a{1}, b{0,9}; the last set journals nothing
    assert entries_in(tmp_path) == ["00000001-00000000.undo", "00000001-00000001.undo", "00000001-00000002.undo"]
    assert not torch.equal(store.tables["a"].view(torch.int32), expected["a"])
    del store  # a crash: durable files stay as they are
    again = resume(tmp_path, m, p)
    assert_same_bits(again, expected)
    assert entries_in(tmp_path) == []
    # the resumed store journals against the same checkpoint: another crash rolls back again
    again.set("a", torch.tensor([1, 2]), rows(2, p, 500.0))
    assert entries_in(tmp_path) == ["00000001-00000000.undo"]
    del again
    assert_same_bits(resume(tmp_path, m, p), expected)


def test_a_fresh_store_in_the_run_dir_forgets_old_files_and_journal(tmp_path: Path) -> None:
    store = new_store(tmp_path, 4, 3)
    store.set("a", torch.tensor([1]), rows(1, 3, 1.0))
    assert entries_in(tmp_path)
    del store
    fresh = new_store(tmp_path, 4, 3)  # not reused: a run started over
    assert entries_in(tmp_path) == [] and not fresh.tables["a"].any()


def crash_on(monkeypatch: pytest.MonkeyPatch, target: object, name: str, when: str = "before", pick=lambda *a: True) -> None:
    """Make ``target.name`` raise (as a kill would stop the process) before or after its real work."""
    original = getattr(target, name)

    def crashing(*args, **kwargs):
        if not pick(*args):
            return original(*args, **kwargs)
        if when == "after":
            original(*args, **kwargs)
        raise KeyboardInterrupt(f"simulated kill {when} {name}")

    monkeypatch.setattr(target, name, crashing)


def test_crash_between_journal_entry_and_table_write(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    m, p = 6, 5
    store = new_store(tmp_path, m, p)
    store.set("a", torch.tensor([2]), rows(1, p, 1.0))
    save(tmp_path, store, 2)
    expected = bits(store)
    store.set("a", torch.tensor([4]), rows(1, p, 2.0))
    with monkeypatch.context() as mp:  # the entry's rename never happens: a torn .tmp entry, table untouched
        crash_on(mp, os, "replace", pick=lambda src, dst: str(dst).endswith("-00000001.undo"))
        with pytest.raises(KeyboardInterrupt):
            store.set("a", torch.tensor([2, 5]), rows(2, p, 3.0))
    assert entries_in(tmp_path) == ["00000001-00000000.undo", "00000001-00000001.undo.tmp"]
    with monkeypatch.context() as mp:  # the entry is durable, the rows are not written yet
        crash_on(mp, journal.UndoJournal, "write", when="after")
        with pytest.raises(KeyboardInterrupt):
            store.set("b", torch.tensor([0]), rows(1, p, 4.0))
    del store
    assert_same_bits(resume(tmp_path, m, p), expected)
    assert entries_in(tmp_path) == []


@pytest.mark.parametrize("where", ["after flush", "before rename", "after rename"])
def test_crash_inside_a_checkpoint_leaves_a_consistent_pair(where: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    m, p = 8, 4
    store = new_store(tmp_path, m, p)
    store.set("a", torch.tensor([1, 2]), rows(2, p, 1.0))
    save(tmp_path, store, 2)
    at_first = bits(store)
    store.set("a", torch.tensor([2, 6]), rows(2, p, 2.0))
    store.set("b", torch.tensor([3]), rows(1, p, 3.0))
    at_second = bits(store)
    with monkeypatch.context() as mp:
        if where == "after flush":
            crash_on(mp, MmapStore, "flush", when="after")
        elif where == "before rename":  # checkpoint.pt.tmp written and fsynced, not renamed
            crash_on(mp, os, "replace", pick=lambda src, dst: Path(dst).name == checkpoint.CHECKPOINT)
        else:  # the new checkpoint is in place, the old epoch's journal entries are not deleted yet
            crash_on(mp, journal.UndoJournal, "begin_epoch")
        with pytest.raises(KeyboardInterrupt):
            save(tmp_path, store, 4)
    del store
    ckpt = checkpoint.load(tmp_path / checkpoint.CHECKPOINT)
    assert ckpt["round"] == (4 if where == "after rename" else 2)
    if where == "after rename":
        assert entries_in(tmp_path) == ["00000001-00000000.undo", "00000001-00000001.undo"]  # epoch 1: stale now
    assert_same_bits(resume(tmp_path, m, p), at_second if where == "after rename" else at_first)
    assert entries_in(tmp_path) == []


def test_crash_during_roll_back_then_roll_back_again(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    m, p = 8, 4
    store = new_store(tmp_path, m, p)
    store.set("a", torch.tensor([0, 1]), rows(2, p, 1.0))
    save(tmp_path, store, 2)
    expected = bits(store)
    for value, ids in ((2.0, [1, 2]), (3.0, [3]), (4.0, [0, 4])):
        store.set("a", torch.tensor(ids), rows(len(ids), p, value))
    del store
    ckpt = checkpoint.load(tmp_path / checkpoint.CHECKPOINT)
    with monkeypatch.context() as mp:  # killed after applying the newest entry, while reading the next
        mp.setattr(journal, "apply_entry", _nth_call_raises(journal.apply_entry, 2))
        with pytest.raises(KeyboardInterrupt):
            checkpoint.roll_back_files(tmp_path, ckpt)
    with monkeypatch.context() as mp:  # killed after the whole roll-back, before the entries are deleted
        crash_on(mp, journal, "discard")
        with pytest.raises(KeyboardInterrupt):
            checkpoint.roll_back_files(tmp_path, ckpt)
    assert len(entries_in(tmp_path)) == 3
    assert_same_bits(resume(tmp_path, m, p), expected)


def _nth_call_raises(original, n: int):
    calls = []

    def call(*args):
        calls.append(args)
        if len(calls) == n:
            raise KeyboardInterrupt("simulated kill during roll-back")
        return original(*args)

    return call


def test_placement_across_a_resume_is_kept_or_refused(tmp_path: Path) -> None:
    """auto keeps the checkpoint's placement; device and pinned hold the same snapshot (tables) and may
    swap; files and tables may not: one sentence."""
    mmap = {"store": {"placement": "mmap", "files": {}}}
    tables = {"store": {"placement": "device", "tables": {}}}
    path = tmp_path / checkpoint.CHECKPOINT
    assert checkpoint.placement(mmap, "auto", path) == "mmap" and checkpoint.placement(mmap, "mmap", path) == "mmap"
    assert checkpoint.placement(tables, "auto", path) == "device" and checkpoint.placement(tables, "pinned", path) == "pinned"
    with pytest.raises(FedrunError, match=r"keeps the client state with state_placement=mmap: resume with state_placement=mmap"):
        checkpoint.placement(mmap, "device", path)
    with pytest.raises(FedrunError, match=r"state_placement=device: resume with state_placement=device \(or auto\)"):
        checkpoint.placement(tables, "mmap", path)


def test_missing_state_file_is_one_sentence(tmp_path: Path) -> None:
    store = new_store(tmp_path, 4, 3)
    save(tmp_path, store, 2)
    store.paths["b"].unlink()

    with pytest.raises(FedrunError, match=r"state_b\.bin is missing but .*checkpoint\.pt refers to it: add resume=false"):
        checkpoint.roll_back_files(tmp_path, checkpoint.load(tmp_path / checkpoint.CHECKPOINT))
    # a damaged journal entry (a disk fault: renamed entries are complete) is one sentence too
    store = new_store(tmp_path, 4, 3)  # new files: b exists again
    store.set("a", torch.tensor([1]), rows(1, 3, 1.0))
    save(tmp_path, store, 2)
    store.set("a", torch.tensor([1]), rows(1, 3, 2.0))  # its old (non-zero) row is journaled
    entry = checkpoint.state_dir(tmp_path) / journal.JOURNAL_DIR / "00000001-00000000.undo"
    entry.write_bytes(entry.read_bytes()[:-4])
    with pytest.raises(FedrunError, match=r"journal in .* cannot be applied \(ValueError\): add resume=false to start"):
        checkpoint.roll_back_files(tmp_path, checkpoint.load(tmp_path / checkpoint.CHECKPOINT))


@pytest.mark.parametrize("crash_after", [1, 3])
def test_a_stopped_run_keeps_state_files_only_for_its_checkpoint(crash_after: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from conftest import compose_config
    from fedrun import runner

    cfg = compose_config("algo=feddyn", "num_clients=5", "rounds=4", "local_epochs=1", "data.mean_samples=30",
                         "participation=0.6", "device=cpu", "progress=false", "checkpoint_every=2", "state_placement=mmap")
    original = runner.run_round

    def crash(exp, r):
        assert exp.store.durable and exp.store.directory == checkpoint.state_dir(tmp_path)
        if r > crash_after:
            raise RuntimeError("simulated crash")
        return original(exp, r)

    with monkeypatch.context() as mp:
        mp.setattr(runner, "run_round", crash)
        with pytest.raises(RuntimeError):
            runner.run(cfg, tmp_path)
    # before the first checkpoint (round 2) nothing can resume from the files: they go
    assert checkpoint.state_dir(tmp_path).exists() == (crash_after >= 2)
    runner.run(cfg, tmp_path)  # resumes (or starts over), finishes, and removes them
    assert not checkpoint.state_dir(tmp_path).exists() and not (tmp_path / checkpoint.CHECKPOINT).exists()


# ----------------------------------------------------------------------------------------------
# Real processes: killed from outside at random moments and from inside at chosen lines

# Runs `python -m fedrun ARGS` with a SIGKILL of itself at the NTH call of one function (before or
# after it does its work). Points: a journal entry made durable but its rows not yet written; a
# checkpoint fsynced but not renamed; renamed but the old journal epoch not yet dropped; the first
# checkpoint written; roll-back killed before applying its second entry; "none": not killed from
# inside, but every round pauses 50 ms after local training (before the client state is written),
# so that a kill from outside lands mid-round, however busy the machine (rounds take ~10 ms).
DRIVER = textwrap.dedent(
    """
    import os, signal, sys, time
    from fedrun.rundir import checkpoint
    from fedrun.simulation import guard
    from fedrun.state import journal
    from fedrun.cli.main import main

    point, nth = sys.argv[1], int(sys.argv[2])
    screen = guard.screen_clients
    guard.screen_clients = lambda *a, **k: (time.sleep(0.05), screen(*a, **k))[1]
    TARGETS = {
        "journal entry": (journal.UndoJournal, "write", "after", lambda *a: True),
        "checkpoint rename": (os, "replace", "before", lambda src, dst: os.path.basename(dst) == "checkpoint.pt"),
        "journal epoch": (journal.UndoJournal, "begin_epoch", "before", lambda *a: True),
        "checkpoint": (checkpoint, "save", "after", lambda *a: True),
        "roll-back": (journal, "apply_entry", "before", lambda *a: True),
    }
    target, name, when, pick = TARGETS.get(point, (os, "getpid", "after", lambda *a: False))
    original, calls = getattr(target, name), []

    def killing(*args, **kwargs):
        if not pick(*args, **kwargs):
            return original(*args, **kwargs)
        calls.append(1)
        if len(calls) == nth and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        out = original(*args, **kwargs)
        if len(calls) == nth:
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    setattr(target, name, killing)
    sys.argv = ["fedrun", *sys.argv[3:]]
    main()
    """
)


def killed_inside(algo: str, run_dir: Path, cwd: Path, point: str, nth: int, *extra: str) -> None:
    args = command(algo, run_dir, *extra)[3:]  # drop `python -m fedrun`
    proc = subprocess.run([sys.executable, "-c", DRIVER, point, str(nth), *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, f"not killed at {point} #{nth}: {proc.stderr[-2000:]}"


def killed_outside(algo: str, run_dir: Path, cwd: Path, k: int, *extra: str) -> None:
    """SIGKILL from outside as soon as ``k`` metrics rows are written (mid-round ``k + 1``, most likely)."""
    args = command(algo, run_dir, *extra)[3:]  # drop `python -m fedrun`
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, "none", "0", *args], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for_rows(proc, run_dir / "metrics.csv", k)
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL and rows_in(run_dir / "metrics.csv") < ROUNDS


def files_checkpoint(run_dir: Path) -> Optional[dict]:
    return torch.load(run_dir / checkpoint.CHECKPOINT, weights_only=False)["store"].get("files")


def finish(algo: str, run_dir: Path, cwd: Path, reference_metrics: Path, *extra: str) -> None:
    proc = subprocess.run(command(algo, run_dir, *extra), cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "resuming" in proc.stderr + proc.stdout
    assert metrics_without_wall(run_dir / "metrics.csv") == metrics_without_wall(reference_metrics)
    assert not (run_dir / checkpoint.CHECKPOINT).exists() and not checkpoint.state_dir(run_dir).exists()


@pytest.mark.slow
def test_feddyn_mmap_killed_anywhere_resumes_identically(reference: dict[str, Path], tmp_path: Path) -> None:
    needs("feddyn")
    run_dir, mmap = tmp_path / "run", "state_placement=mmap"
    killed_outside("feddyn", run_dir, tmp_path, 3, mmap)  # after the checkpoint of round 2
    ckpt = files_checkpoint(run_dir)
    assert ckpt is not None and set(ckpt["tables"]) == {"s", "_latest_delta"}
    assert torch.load(run_dir / checkpoint.CHECKPOINT, weights_only=False)["round"] <= 6, "the kill came too late"
    # s and _latest_delta rows of the next round are journaled (2 entries), the 3rd entry is the
    # next round's s: durable, its rows not written, then the kill: 3 entries to roll back
    killed_inside("feddyn", run_dir, tmp_path, "journal entry", 3, mmap)
    assert len(entries_in(run_dir)) == 3
    killed_inside("feddyn", run_dir, tmp_path, "roll-back", 2, mmap)  # half rolled back
    killed_inside("feddyn", run_dir, tmp_path, "checkpoint rename", 1, mmap)
    assert (run_dir / "checkpoint.pt.tmp").exists()
    before = torch.load(run_dir / checkpoint.CHECKPOINT, weights_only=False)["round"]
    killed_inside("feddyn", run_dir, tmp_path, "journal epoch", 1, mmap)
    assert torch.load(run_dir / checkpoint.CHECKPOINT, weights_only=False)["round"] == before + 2
    assert entries_in(run_dir)  # the previous epoch's entries: stale, must not be applied
    finish("feddyn", run_dir, tmp_path, reference["feddyn"], mmap)


@pytest.mark.slow  # 14 s: make test keeps the FedDyn mmap resume tests
def test_scaffold_mmap_resumed_keeps_its_placement_and_is_identical(reference: dict[str, Path], tmp_path: Path) -> None:
    needs("scaffold")
    run_dir = tmp_path / "run"
    killed_outside("scaffold", run_dir, tmp_path, 3, "state_placement=mmap")  # in round 4
    assert files_checkpoint(run_dir) is not None
    from conftest import compose_config
    from fedrun import runner

    with pytest.raises(FedrunError, match="keeps the client state with state_placement=mmap: resume with state_placement=mmap"):
        runner.run(compose_config("algo=scaffold", *ARGS, "state_placement=device"), run_dir)
    killed_inside("scaffold", run_dir, tmp_path, "checkpoint", 1)  # state_placement=auto: the checkpoint's mmap
    assert files_checkpoint(run_dir) is not None
    finish("scaffold", run_dir, tmp_path, reference["scaffold"], "state_placement=mmap")
