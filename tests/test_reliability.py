"""Issue 23: a resume never continues from damaged state; disk full or read-only at any write.

A "kill" in process is an exception no ``except Exception`` stops (as SIGKILL is stopped by nothing),
raised in round 3 of a run that checkpointed after round 2 (``checkpoint_every=2``); the re-run must
give exactly the uninterrupted run's ``metrics.csv`` (``wall_s`` aside) or refuse in one sentence.
"""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import compose_config
from fedrun import runner
from fedrun.rundir import checkpoint
from fedrun.errors import FedrunError
from tests.test_errors import TINY

pytestmark = pytest.mark.usefixtures("one_thread", "restore_logging")

RUN = [*TINY, "rounds=5", "checkpoint_every=2", "threads=1"]


class Killed(BaseException):
    pass


def metrics(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "metrics.csv").drop(columns="wall_s")


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> pd.DataFrame:
    """The uninterrupted run's metrics (rounds=5)."""
    run_dir = tmp_path_factory.mktemp("straight")
    runner.run(compose_config(*RUN), run_dir)
    return metrics(run_dir)


def killed_in_round(monkeypatch, run_dir: Path, at: int = 3, *overrides: str) -> None:
    """Run until round ``at`` starts, then die (the checkpoint of round 2 stands)."""
    real = runner.run_round

    def run_round(exp, r):
        if r == at:
            raise Killed(r)
        return real(exp, r)

    with monkeypatch.context() as mp:
        mp.setattr(runner, "run_round", run_round)
        with pytest.raises(Killed):
            runner.run(compose_config(*RUN, *overrides), run_dir)
    assert (run_dir / checkpoint.CHECKPOINT).exists()


_KILLED: dict[str, Path] = {}  # "kill" runs made once per module, copied into each test's dir


@pytest.fixture(scope="module", autouse=True)
def killed_cache(tmp_path_factory):
    _KILLED.clear()
    _KILLED["base"] = tmp_path_factory.mktemp("killed")
    yield
    _KILLED.clear()


def killed_copy(run_dir: Path, at: int = 3, *overrides: str) -> None:
    """``run_dir`` as :func:`killed_in_round` leaves it (made once per module, then copied)."""
    import shutil

    source = _KILLED["base"] / f"at{at}{'-'.join(overrides)}"
    if not source.exists():
        with pytest.MonkeyPatch.context() as mp:
            killed_in_round(mp, source, at, *overrides)
    shutil.copytree(source, run_dir, dirs_exist_ok=True)


def cut(path: Path, n: int) -> None:
    path.write_bytes(path.read_bytes()[:-n])


METRICS_DAMAGE = {
    "cut 7 bytes (mid-row)": lambda p: cut(p, 7),
    "cut to the header": lambda p: p.write_text(p.read_text().splitlines(keepends=True)[0]),
    "deleted": lambda p: p.unlink(),
    "a junk line appended": lambda p: p.write_bytes(p.read_bytes() + b"1,2,x\x00y\n"),
    "a digit changed": lambda p: p.write_text(p.read_text().replace("0.", "9.", 1)),
    "junk": lambda p: p.write_bytes(b"\xff\xfe junk"),
}


@pytest.mark.parametrize("damage", list(METRICS_DAMAGE))
def test_a_damaged_metrics_csv_is_rewritten_from_the_checkpoint(damage, straight, monkeypatch, tmp_path):
    """The checkpoint holds every row: the resumed metrics.csv is the uninterrupted one whatever
    a crash or a full disk did to the file (it used to keep a cut row and glue the next onto it)."""
    killed_copy(tmp_path, 4)  # rows 1-3 in the file, checkpoint of round 2
    METRICS_DAMAGE[damage](tmp_path / "metrics.csv")
    runner.run(compose_config(*RUN), tmp_path)
    pd.testing.assert_frame_equal(metrics(tmp_path), straight)


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_every_flipped_byte_or_truncation_of_a_checkpoint_is_refused_or_harmless(monkeypatch, tmp_path):
    """Flip single bytes of checkpoint.pt at 300 seeded offsets and cut it at 100 lengths: loading it
    either raises the one "is damaged" sentence or gives content whose checksum is the original's
    (a byte of the zip's own bookkeeping that changes nothing); never other content."""
    killed_copy(tmp_path)
    path = tmp_path / checkpoint.CHECKPOINT
    original = path.read_bytes()
    reference = checkpoint.digest(checkpoint.load(path))
    rng = random.Random(23)
    outcomes = {"refused": 0, "same": 0}
    cases = [("flip", rng.randrange(len(original))) for _ in range(300)] + [("cut", rng.randrange(1, len(original))) for _ in range(100)]
    for kind, at in cases:
        path.write_bytes(original)
        flip(path, at) if kind == "flip" else cut(path, at)
        try:
            ckpt = checkpoint.load(path)
        except FedrunError as err:
            assert "is damaged" in str(err) or "not a fedrun checkpoint" in str(err), str(err)
            outcomes["refused"] += 1
            continue
        assert checkpoint.digest(ckpt) == reference, f"{kind} at {at} changed the content silently"
        outcomes["same"] += 1
    assert outcomes["refused"] > 200  # most bytes are content (tensors, the pickle)


def test_a_flipped_tensor_byte_is_refused_end_to_end(monkeypatch, tmp_path):
    """A flipped byte in the server model's data (memory-mapped, never unpickled) used to resume
    silently and change the metrics from round 3 on: now the re-run is refused in one sentence."""
    killed_copy(tmp_path)
    path = tmp_path / checkpoint.CHECKPOINT
    theta = checkpoint.load(path)["theta"]
    needle = theta[:4].numpy().tobytes()
    offset = path.read_bytes().index(needle)
    flip(path, offset + 1)
    with pytest.raises(FedrunError, match=r"checkpoint.pt in .* is damaged: its checksum does not match .* delete it to start over"):
        runner.run(compose_config(*RUN), tmp_path)


def hand_edit(path: Path, recompute: bool, **changes) -> None:
    ckpt = torch.load(path, weights_only=False)
    ckpt.update(changes)
    ckpt.pop("digest")
    torch.save(checkpoint.with_digest(ckpt) if recompute else ckpt, path)


@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("edit", [{"rows": []}, {"round": -1}, {"round": 0}, {"round": 2.5}, {"rows": [{"round": 9}]},
                                  {"counters": {}}, {"config": None}, {"theta": None}])
def test_a_hand_edited_checkpoint_is_refused(edit, recompute, monkeypatch, tmp_path):
    """Hand edits (with the checksum dropped or recomputed to match) are refused with the same
    sentence: no rows although rounds 1-2 were evaluated, a round that is not a round number, rows
    past the checkpoint's round, counters of another round, no config or server model."""
    killed_copy(tmp_path)
    hand_edit(tmp_path / checkpoint.CHECKPOINT, recompute, **edit)
    with pytest.raises(FedrunError, match=r"checkpoint.pt in .* is damaged: "):
        checkpoint.load(tmp_path / checkpoint.CHECKPOINT)


def test_a_checkpoint_without_checksum_is_refused(monkeypatch, tmp_path):
    killed_copy(tmp_path)
    hand_edit(tmp_path / checkpoint.CHECKPOINT, recompute=False)
    with pytest.raises(FedrunError, match="holds no checksum"):
        runner.run(compose_config(*RUN), tmp_path)


def test_a_thread_change_on_resume_is_refused(monkeypatch, tmp_path, straight):
    """The CPU kernels split their sums by thread: 1 and 2 threads round differently, so a resume
    with another thread count is refused (naming the one to use); the same count resumes exactly,
    however it was chosen (threads=null picks 1 for a model this small: fedrun/threads.py)."""
    killed_copy(tmp_path)
    with pytest.raises(FedrunError, match=r"ran with 1 torch thread\(s\) and this run would use 2.*resume with threads=1"):
        runner.run(compose_config(*RUN, "threads=2"), tmp_path)
    assert torch.get_num_threads() == 1  # put back after the refusal
    runner.run(compose_config(*RUN, "threads=null"), tmp_path)
    pd.testing.assert_frame_equal(metrics(tmp_path), straight)


def test_an_unfinished_run_rerun_with_more_rounds_is_that_longer_run(monkeypatch, tmp_path):
    """Nothing before the last round depends on rounds= (its row and checkpoint aside, which an
    unfinished run has not reached): continued with rounds=7, the run is exactly a rounds=7 run."""
    killed_copy(tmp_path)
    runner.run(compose_config(*RUN, "rounds=7"), tmp_path)
    longer = tmp_path / "longer"
    runner.run(compose_config(*RUN, "rounds=7"), longer)
    pd.testing.assert_frame_equal(metrics(tmp_path), metrics(longer))
    assert len(metrics(longer)) == 7


def test_fewer_rounds_than_the_checkpoint_has_are_refused(monkeypatch, tmp_path):
    killed_copy(tmp_path, 5)  # checkpoint of round 4
    with pytest.raises(FedrunError, match=r"rounds \(5 there, 3 now\)"):
        runner.run(compose_config(*RUN, "rounds=3"), tmp_path)


def test_a_damaged_mmap_state_file_is_refused(monkeypatch, tmp_path):
    """The checkpoint records every row's CRC-32 of the memory-mapped client-state files: a byte
    flipped anywhere in them (60 seeded offsets, checked by the roll-back that resuming does) is
    refused in one sentence, or lands in a row the undo journal puts back (then the files are the
    checkpoint's exactly); a file cut short is refused; the intact files resume exactly."""
    import shutil

    killed_copy(tmp_path, 4, "state_placement=mmap")  # round 3 wrote rows after the checkpoint
    state, saved = tmp_path / "state", tmp_path / "saved-state"
    shutil.copytree(state, saved)
    files = sorted(state.glob("state_*.bin"))
    checkpoint.roll_back_files(tmp_path, checkpoint.load(tmp_path / checkpoint.CHECKPOINT))
    rolled_back = {f.name: f.read_bytes() for f in files}
    rng = random.Random(5)
    outcomes = {"refused": 0, "put back": 0}
    for _ in range(60):
        shutil.rmtree(state)
        shutil.copytree(saved, state)
        target = rng.choice(files)
        flip(target, rng.randrange(target.stat().st_size))
        try:
            checkpoint.roll_back_files(tmp_path, checkpoint.load(tmp_path / checkpoint.CHECKPOINT))
        except FedrunError as err:
            assert f"{target.name} in {state} is damaged: 1 client row(s)" in str(err), str(err)
            outcomes["refused"] += 1
            continue
        assert {f.name: f.read_bytes() for f in files} == rolled_back
        outcomes["put back"] += 1
    assert outcomes["refused"] > 10 and outcomes["put back"] > 10  # round 3 rewrote 3 of the 5 rows
    shutil.rmtree(state)
    shutil.copytree(saved, state)
    cut(files[0], 4)
    with pytest.raises(FedrunError, match="has .* bytes instead of"):
        runner.run(compose_config(*RUN, "state_placement=mmap"), tmp_path)


class Faults:
    """A full disk from the k-th write on (``ENOSPC``: that write puts half its bytes down, as a disk
    that fills up mid-write does, then raises; every later write and allocation raises too) or a
    filesystem that turns read-only at the k-th open for writing (``EROFS``), for the files under
    ``root``. ``k=None`` only counts. Patched: ``open`` (``builtins.open``, ``io.open``, which
    ``Path.open``/``write_text`` use; torch.save writes into the file objects these return) and
    ``os.posix_fallocate`` (the mmap tables' blocks)."""

    def __init__(self, root: Path, k=None, code=None):
        import errno

        self.root, self.k, self.code = str(root), k, code or errno.ENOSPC
        self.writes = self.opens = 0

    def failing(self, count: int) -> bool:
        return self.k is not None and count >= self.k

    def error(self) -> OSError:
        import os

        return OSError(self.code, os.strerror(self.code))

    def install(self, mp) -> None:
        import builtins
        import errno
        import io
        import os

        real_open, real_fallocate, faults = io.open, os.posix_fallocate, self

        class File:
            def __init__(self, f):
                self._f = f

            def write(self, data):
                faults.writes += 1
                if faults.code == errno.ENOSPC and faults.failing(faults.writes):
                    if faults.writes == faults.k:
                        self._f.write(data[: len(data) // 2])
                        self._f.flush()
                    raise faults.error()
                return self._f.write(data)

            def __getattr__(self, name):
                return getattr(self._f, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return self._f.__exit__(*exc)

            def __iter__(self):
                return iter(self._f)

        def fake_open(file, mode="r", *args, **kwargs):
            f = real_open(file, mode, *args, **kwargs) if not (isinstance(file, (str, os.PathLike)) and str(file).startswith(faults.root)
                                                              and any(c in mode for c in "wax+")) else None
            if f is not None:
                return f
            faults.opens += 1
            if faults.code == errno.EROFS and faults.failing(faults.opens):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(file))
            return File(real_open(file, mode, *args, **kwargs))

        def fallocate(fd, offset, length):
            faults.writes += 1
            if faults.code == errno.ENOSPC and faults.failing(faults.writes):
                raise faults.error()
            return real_fallocate(fd, offset, length)

        mp.setattr(builtins, "open", fake_open)
        mp.setattr(io, "open", fake_open)
        mp.setattr(os, "posix_fallocate", fallocate)


MMAP_RUN = ["state_placement=mmap"]


@pytest.fixture(scope="module")
def straight_mmap(tmp_path_factory) -> pd.DataFrame:
    run_dir = tmp_path_factory.mktemp("straight_mmap")
    runner.run(compose_config(*RUN, *MMAP_RUN), run_dir)
    return metrics(run_dir)


def fault_then_resume(monkeypatch, run_dir: Path, overrides, k: int, code: int, expected: pd.DataFrame) -> str:
    """Run with the fault at the k-th write; check the sentence, that what stands is whole; rerun
    with the disk freed: the uninterrupted metrics. Returns the sentence."""
    faults = Faults(run_dir, k, code)
    with monkeypatch.context() as mp:
        faults.install(mp)
        with pytest.raises(FedrunError) as raised:
            runner.run(compose_config(*RUN, *overrides), run_dir)
    sentence = str(raised.value)
    assert type(raised.value).__name__ == "DiskFull", sentence
    assert sentence.startswith("the disk is full (no space left while writing " + str(run_dir)) or " cannot be written (read-only" in sentence, sentence
    if code == 28:
        assert "which needs about " in sentence and " free there): free space there" in sentence, sentence
    assert not [p for p in run_dir.rglob("*.tmp")], "a failed write leaves no temporary file"
    if (run_dir / checkpoint.CHECKPOINT).exists():
        checkpoint.load(run_dir / checkpoint.CHECKPOINT)  # the previous checkpoint is whole (checksum verified)
    summary = runner.run(compose_config(*RUN, *overrides), run_dir)
    assert summary["status"] == "finished"
    pd.testing.assert_frame_equal(metrics(run_dir), expected)
    return sentence


def count_writes(monkeypatch, run_dir: Path, overrides) -> Faults:
    faults = Faults(run_dir)
    with monkeypatch.context() as mp:
        faults.install(mp)
        runner.run(compose_config(*RUN, *overrides), run_dir)
    return faults


def disk_full_cases(monkeypatch, tmp_path, placement, request, enospc, erofs) -> int:
    import errno

    overrides = MMAP_RUN if placement == "mmap" else []
    expected = request.getfixturevalue("straight_mmap" if placement == "mmap" else "straight")
    total = count_writes(monkeypatch, tmp_path / "count", overrides)
    rng = random.Random(placement)
    cases = [(k, errno.ENOSPC) for k in enospc(rng, total.writes)] + [(k, errno.EROFS) for k in erofs(rng, total.opens)]
    for k, code in cases:
        fault_then_resume(monkeypatch, tmp_path / f"{code}-{k}", overrides, k, code, expected)
    return len(cases)


@pytest.mark.parametrize("placement", ["device", "mmap"])
def test_disk_full_at_sampled_writes_then_resume_is_exact(placement, monkeypatch, tmp_path, request):
    """ENOSPC from the k-th write on (4 seeded k over the run's ~1,200 writes: the lock file,
    summary, metrics rows, checkpoints, mmap blocks and journal entries, the final summary) and
    EROFS at a seeded open: one DiskFull sentence naming the file and the space needed, nothing
    half-written left, the previous checkpoint whole; the re-run gives the uninterrupted metrics.
    (Many more k: the slow test below.)"""
    disk_full_cases(monkeypatch, tmp_path, placement, request,
                    lambda rng, n: rng.sample(range(1, n + 1), 4), lambda rng, n: rng.sample(range(1, n + 1), 1))


@pytest.mark.slow
@pytest.mark.parametrize("placement", ["device", "mmap"])
def test_disk_full_at_every_kind_of_write_then_resume_is_exact(placement, monkeypatch, tmp_path, request):
    """As above at every 8th of the run's writes (~150 per placement) and at every open for writing."""
    disk_full_cases(monkeypatch, tmp_path, placement, request,
                    lambda rng, n: range(1, n + 1, 8), lambda rng, n: range(1, n + 1))


def can_mount() -> bool:
    import os
    import subprocess

    if os.geteuid() != 0:
        return False
    probe = Path("/tmp") / f"fedrun-mount-probe-{os.getpid()}"
    probe.mkdir(exist_ok=True)
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)], capture_output=True).returncode == 0
    if ok:
        subprocess.run(["umount", str(probe)], check=True)
    probe.rmdir()
    return ok


real_filesystems = pytest.mark.skipif(not can_mount(), reason="needs root to mount a small tmpfs")


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of a given size at tmp_path/disk (remount to resize or make read-only); unmounted after."""
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = []

    def mount(options: str) -> Path:
        verb = ["-o", f"remount,{options}"] if mounted else ["-t", "tmpfs", "-o", options, "tmpfs"]
        subprocess.run(["mount", *verb, str(disk)], check=True)
        mounted.append(options)
        return disk

    yield mount
    if mounted:  # lazily: a failed run's memory maps may outlive the test until collected
        subprocess.run(["umount", "-l", str(disk)], check=True)


@real_filesystems
@pytest.mark.parametrize("placement, size_kb", [
    ("device", 28), ("mmap", 40),
    *[pytest.param(p, k, marks=pytest.mark.slow) for p, k in [("device", 16), ("device", 40), ("device", 56),
                                                             ("mmap", 16), ("mmap", 28), ("mmap", 56)]],
])
def test_a_real_full_disk_then_more_space_resumes_exactly(size_kb, placement, small_disk, request):
    """A real tmpfs of 16-56 KB fills up at the lock, summary, metrics rows, checkpoints or mmap
    blocks (the run needs ~40 KB): one DiskFull sentence naming the file, the previous checkpoint
    whole; grown to 10 MB, the same run resumes to the uninterrupted metrics."""
    overrides = MMAP_RUN if placement == "mmap" else []
    expected = request.getfixturevalue("straight_mmap" if placement == "mmap" else "straight")
    disk = small_disk(f"size={size_kb}k")
    run_dir = disk / "run"
    with pytest.raises(FedrunError) as raised:
        runner.run(compose_config(*RUN, *overrides), run_dir)
    assert str(raised.value).startswith(f"the disk is full (no space left while writing {run_dir}/"), str(raised.value)
    assert not list(run_dir.rglob("*.tmp"))
    if (run_dir / checkpoint.CHECKPOINT).exists():
        checkpoint.load(run_dir / checkpoint.CHECKPOINT)
    small_disk("size=10m")
    assert runner.run(compose_config(*RUN, *overrides), run_dir)["status"] == "finished"
    pd.testing.assert_frame_equal(metrics(run_dir), expected)


@real_filesystems
def test_a_finished_run_on_a_read_only_filesystem_says_nothing_to_do(small_disk, monkeypatch, capsys, tmp_path):
    """A finished run on a read-only filesystem (a copy of results, a read-only mount): the command
    says "nothing to do" (exit 0; it used to say "not writable"), even with its plot missing, and
    fedrun.run returns its metrics; an unfinished one there is one DiskFull sentence."""
    import sys

    import fedrun
    from fedrun.cli import main as cli

    disk = small_disk("size=10m")
    runner.run(compose_config(*RUN), disk / "run")
    (disk / "run" / "convergence.png").unlink(missing_ok=True)
    small_disk("ro")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["fedrun", *RUN, f"hydra.run.dir={disk / 'run'}"])
    cli.main()  # returns: exit 0
    assert "already holds a finished run of this config" in capsys.readouterr().err
    assert len(fedrun.run(list(RUN), run_dir=disk / "run")) == 5
    with pytest.raises(FedrunError, match="cannot be written .read-only file system"):
        runner.run(compose_config(*RUN, "seed=1"), disk / "other")


def damage_every_file(monkeypatch, tmp_path, expected, per_file: int) -> dict[str, int]:
    """Kill an mmap run in round 4 (checkpoint of round 2, round 3's rows journaled), then for every
    file of its run dir, ``per_file`` seeded byte flips and as many truncations, each on a fresh copy
    of the dir: the re-run is refused in one sentence or gives exactly the uninterrupted metrics."""
    import shutil

    pristine = tmp_path / "pristine"
    killed_copy(pristine, 4, "state_placement=mmap")
    files = sorted(p.relative_to(pristine) for p in pristine.rglob("*") if p.is_file() and p.stat().st_size)
    assert {"checkpoint.pt", "metrics.csv", "summary.json"} <= {str(f) for f in files} and any("journal" in str(f) for f in files)
    rng = random.Random(23)
    outcomes = {"refused": 0, "repaired": 0}
    for n, name in enumerate(files):
        for kind in ["flip"] * per_file + ["cut"] * per_file:
            run_dir = tmp_path / f"case{n}-{kind}-{rng.random():.6f}"
            shutil.copytree(pristine, run_dir)
            target = run_dir / name
            size = target.stat().st_size
            flip(target, rng.randrange(size)) if kind == "flip" else cut(target, rng.randrange(1, size + 1))
            try:
                runner.run(compose_config(*RUN, "state_placement=mmap"), run_dir)
            except FedrunError as err:
                sentence = str(err)
                assert "\n" not in sentence and sentence.endswith(".") and str(run_dir) in sentence, sentence
                outcomes["refused"] += 1
                continue
            pd.testing.assert_frame_equal(metrics(run_dir), expected, obj=f"{kind} of {name}")
            outcomes["repaired"] += 1
    return outcomes


def test_a_flip_or_cut_in_any_run_dir_file_is_refused_or_repaired_exactly(monkeypatch, tmp_path, straight_mmap):
    outcomes = damage_every_file(monkeypatch, tmp_path, straight_mmap, per_file=1)
    assert outcomes["refused"] and outcomes["repaired"]


@pytest.mark.slow
def test_many_flips_and_cuts_in_every_run_dir_file(monkeypatch, tmp_path, straight_mmap):
    outcomes = damage_every_file(monkeypatch, tmp_path, straight_mmap, per_file=6)
    assert outcomes["refused"] and outcomes["repaired"]


# --- section 3: every input one sentence -------------------------------------------------------

API_INPUTS = {
    "an int": (123, None, "fedrun.run takes a list of overrides"),
    "None": (None, None, "fedrun.run takes a list of overrides"),
    "a string": ("algo=fedavg", None, "fedrun.run takes a list of overrides"),
    "a list of ints": ([1, 2], None, "fedrun.run takes a list of overrides"),
    "run_dir=5": (list(TINY), 5, "run_dir=5 is not a path"),
    "run_dir=''": (list(TINY), "", "run_dir='' is empty"),
    "run_dir='.'": (list(TINY), ".", "run_dir='' is empty"),
    "a bad override": (["lrr=0.1"], None, "lrr is not a config key"),
}


@pytest.mark.parametrize("case", list(API_INPUTS))
def test_the_python_api_raises_fedrun_error_for_bad_input(case, monkeypatch, tmp_path):
    import fedrun

    monkeypatch.chdir(tmp_path)
    config, run_dir, piece = API_INPUTS[case]
    with pytest.raises(FedrunError, match=piece.replace("(", r"\(")):
        fedrun.run(config, run_dir=run_dir)
    assert list(tmp_path.iterdir()) == []  # nothing written (run_dir='' used to write into the current dir)


def test_the_python_api_checks_a_dictconfig_given_to_it(tmp_path):
    import fedrun
    from omegaconf import OmegaConf

    cfg = fedrun.compose(TINY)
    no_algo = cfg.copy()
    no_algo.algo = None
    with pytest.raises(FedrunError, match=r"algo=None in the config given to fedrun.run is not an option of algo"):
        fedrun.run(no_algo, run_dir=tmp_path / "a")
    with pytest.raises(FedrunError, match=r"lacks the keys lr: build it with fedrun.compose"):
        fedrun.run(OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "lr"]), run_dir=tmp_path / "b")
    with pytest.raises(FedrunError, match=r"lacks the keys algo, batch_size, .* and \d+ more"):
        fedrun.run(OmegaConf.create({"lr": 0.1}), run_dir=tmp_path / "c")


def test_a_full_disk_under_the_python_api_is_a_fedrun_error(monkeypatch, tmp_path):
    import errno

    import fedrun

    faults = Faults(tmp_path / "run", 3, errno.ENOSPC)
    with monkeypatch.context() as mp:
        faults.install(mp)
        with pytest.raises(FedrunError, match="the disk is full"):
            fedrun.run(RUN, run_dir=tmp_path / "run")


def test_two_threads_on_one_run_dir_one_is_refused_in_one_sentence(tmp_path):
    """The run-dir lock is re-entrant within a thread only: a second thread of the same process
    gets the in-use sentence while the first holds it."""
    import threading

    from fedrun.rundir import lock

    held = lock.lock_run_dir(tmp_path)
    errors = []
    thread = threading.Thread(target=lambda: errors.append(pytest.raises(FedrunError, lock.lock_run_dir, tmp_path).value))
    thread.start()
    thread.join()
    assert "is in use by another fedrun run in this process (another thread)" in str(errors[0])
    held.release()
    lock.lock_run_dir(tmp_path).release()  # free again


def test_finetune_steps_without_client_test_fraction_is_refused():
    import fedrun

    with pytest.raises(FedrunError, match=r"finetune_steps=3 does nothing without client_test_fraction.*add client_test_fraction=0.2"):
        fedrun.compose([*TINY, "finetune_steps=3"])
    fedrun.compose([*TINY, "finetune_steps=3", "client_test_fraction=0.2"])


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_a_signal_during_import_torch_is_one_sentence(signum, tmp_path):
    """Ctrl-C or SIGTERM while fedrun imports torch (its first second): one sentence, exit
    128+signal, nothing written (it used to be a KeyboardInterrupt traceback, or no word at all).
    The signal is sent by the process itself at the moment ``import torch`` starts."""
    import subprocess
    import sys

    code = f"""
import builtins, os, signal, sys
real = builtins.__import__
def hook(name, *a, **k):
    if name == "torch" and not getattr(hook, "sent", False):
        hook.sent = True
        os.kill(os.getpid(), signal.{signum})
    return real(name, *a, **k)
builtins.__import__ = hook
sys.argv = ["fedrun", "hydra.run.dir={tmp_path / 'run'}"]
from fedrun.cli.help import main
main()
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    number = int(getattr(__import__("signal"), signum))
    assert done.returncode == 128 + number, done.stderr
    # before fedrun.cli.main is imported: "before the run started; nothing was written"; when torch is
    # imported later, inside main (lazily): the start-up sentence ("before the run's rounds began ...")
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(f"fedrun: error: stopped by {signum} before the run"), done.stderr
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("runs")
    runner.run(compose_config(*TINY, "threads=1"), base / "a")
    return base


REPORT_INPUTS = {
    "a file as DIR": (lambda b, t: [str(b / "a" / "metrics.csv")], "is a file, not a directory"),
    "a missing DIR": (lambda b, t: [str(t / "nope")], "does not exist"),
    "an empty DIR": (lambda b, t: [str(t)], "holds no runs"),
    "a file as --out": (lambda b, t: [str(b), "--out", str(b / "a" / "metrics.csv")], "is a file: give --out a directory"),
    "--metric foo": (lambda b, t: [str(b), "--metric", "foo", "--out", str(t / "o")], "--metric foo is not a column of the runs' metrics.csv: use one of"),
    "--published missing.csv": (lambda b, t: [str(b), "--published", str(t / "missing.csv"), "--out", str(t / "o")], "is not a file"),
}


@pytest.mark.parametrize("case", list(REPORT_INPUTS))
def test_fedrun_report_bad_inputs_are_one_sentence_and_exit_2(case, finished_runs, capsys, tmp_path):
    from fedrun.report import cli as report

    args, piece = REPORT_INPUTS[case]
    assert report.main(args(finished_runs, tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fedrun-report: error: ") and piece in err, err
    assert not (tmp_path / "o").exists()  # nothing written


def test_fedrun_report_on_a_read_only_out_is_one_sentence(finished_runs, small_disk_or_skip, capsys):
    from fedrun.report import cli as report

    disk = small_disk_or_skip
    assert report.main([str(finished_runs), "--out", str(disk / "out"), "--no-figures"]) == 2
    assert "cannot be written (a read-only" in capsys.readouterr().err


@pytest.fixture
def small_disk_or_skip(request):
    if not can_mount():
        pytest.skip("needs root to mount a small tmpfs")
    mount = request.getfixturevalue("small_disk")
    mount("size=1m")
    return mount("ro")


# --- a property over the config schema ---------------------------------------------------------

def _schema_keys() -> list[str]:
    """Every dotted key of the default config (top level and the default groups' keys)."""
    from omegaconf import OmegaConf

    flat = pd.json_normalize(OmegaConf.to_container(compose_config(), resolve=False), sep=".").columns
    return sorted(k for k in flat if not k.endswith("_target_") and not k.startswith("hydra"))


SCHEMA_KEYS = _schema_keys()
# keys whose random values keep a tiny run tiny (no rounds=10**9): the ones fedrun.run is tried with
CHEAP_KEYS = ["lr", "lr_decay", "weight_decay", "clip_norm", "seed", "participation", "sampling", "eval_every",
              "eval_active", "eval_all", "checkpoint_every", "divergence_factor", "on_nonfinite", "targets",
              "keep_checkpoint", "quiet", "algo.alpha", "batch_size", "val_fraction", "client_test_fraction",
              "finetune_steps", "threads", "precision", "resume", "skip_finished"]


def values():
    from hypothesis import strategies as st

    return st.one_of(
        st.integers(-10**12, 10**12).map(str),
        st.integers(0, 5).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.floats(0, 1).map(repr),
        st.sampled_from(["true", "false", "yes", "2", "null", "[]", "[1,2]", "[-5]", "{}", "abc", "''", "${oc.env:NOPE}"]),
        st.text(alphabet="ab1.-_=,[]{}() '\"$:", max_size=6),
    )


def names_a_key(sentence: str) -> bool:
    return any(k in sentence for k in SCHEMA_KEYS + ["algo", "data", "partition", "model", "engine", "hydra.run.dir"])


def check_outcome(call, keys) -> str:
    """'ok', or 'refused' for a FedrunError of one sentence naming a key; anything else fails."""
    from fedrun.rundir.resume import RunFinished

    try:
        call()
    except RunFinished:
        return "ok"
    except FedrunError as err:
        sentence = str(err)
        assert "\n" not in sentence.strip() and names_a_key(sentence), f"{keys}: {sentence}"
        return "refused"
    return "ok"


OUTCOMES: dict[str, dict[str, int]] = {"precheck": {"ok": 0, "refused": 0}, "run": {"ok": 0, "refused": 0}}


def precheck_property(tmp_path, monkeypatch, examples: int) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from fedrun.cli.precheck import precheck

    monkeypatch.chdir(tmp_path)

    @settings(max_examples=examples, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(st.lists(st.tuples(st.sampled_from(SCHEMA_KEYS), values()), min_size=1, max_size=3))
    def prop(pairs):
        overrides = [f"{k}={v}" for k, v in pairs]
        OUTCOMES["precheck"][check_outcome(lambda: precheck([*TINY, *overrides]), overrides)] += 1

    prop()


def run_property(tmp_path, monkeypatch, examples: int) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    import fedrun

    monkeypatch.chdir(tmp_path)

    @settings(max_examples=examples, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(st.lists(st.tuples(st.sampled_from(CHEAP_KEYS), values()), min_size=1, max_size=2))
    def prop(pairs):
        overrides = [f"{k}={v}" for k, v in pairs]
        run_dir = tmp_path / f"r{sum(OUTCOMES['run'].values())}"
        OUTCOMES["run"][check_outcome(lambda: fedrun.run([*TINY, "rounds=2", "threads=1", *overrides], run_dir=run_dir), overrides)] += 1

    prop()


def test_random_values_of_every_key_through_the_cli_precheck_are_valid_or_one_sentence(tmp_path, monkeypatch):
    """Random values of every key's type, beyond its bounds and junk strings (1-3 keys at a time):
    the CLI's pre-check accepts them or raises a FedrunError of one sentence naming a key, never
    another exception. 6 examples here (~0.4 s each), 300 in the slow test."""
    precheck_property(tmp_path, monkeypatch, 6)


def test_random_values_through_fedrun_run_are_a_run_or_one_sentence(tmp_path, monkeypatch):
    """The same through ``fedrun.run`` for the keys that keep a run tiny: a run (finished, or
    refused as diverged) or one FedrunError sentence naming a key. 6 examples here, 80 in the slow test."""
    run_property(tmp_path, monkeypatch, 6)


@pytest.mark.slow
def test_many_random_values_through_the_precheck_and_fedrun_run(tmp_path, monkeypatch):
    for part in ("p", "r"):
        (tmp_path / part).mkdir()
    precheck_property(tmp_path / "p", monkeypatch, 300)
    run_property(tmp_path / "r", monkeypatch, 80)
    print("property outcomes:", OUTCOMES)
    assert min(OUTCOMES["precheck"].values()) > 0 and min(OUTCOMES["run"].values()) > 0


@pytest.mark.parametrize("args, piece", [
    (["targets=abc"], "targets=abc has the wrong type: targets takes a list (e.g. targets=[0.5,0.8]"),
    (["targets=5"], "targets=5 has the wrong type: targets takes a list"),
    (["logger=5"], "logger=5 is not valid: give a logger name or a list of them"),
    (["logger=true"], "logger=True is not valid"),
])
def test_a_wrong_type_for_a_list_valued_key_is_one_sentence(args, piece, monkeypatch, capsys, tmp_path):
    """These used to be "unexpected error (TypeError ...); this is a bug" or "takes a value of another type"."""
    from tests.test_errors import cli_error

    code, sentence = cli_error(monkeypatch, capsys, tmp_path, [*TINY, *args])
    assert code == 2 and sentence.startswith(piece), sentence


@pytest.mark.parametrize("name", ["cli.log", "run.lock", ".hydra/config.yaml"])
def test_a_run_dir_whose_log_or_lock_is_a_directory_is_one_sentence(name, monkeypatch, capsys, tmp_path):
    from tests.test_errors import cli_error

    run_dir = tmp_path / "run"
    (run_dir / name).mkdir(parents=True)
    code, sentence = cli_error(monkeypatch, capsys, tmp_path, [*TINY, f"hydra.run.dir={run_dir}"])
    assert code == 2 and sentence == f"{run_dir / name} is not a file, so this run dir cannot be used: remove it, or pick another hydra.run.dir."


# --- torchrun ----------------------------------------------------------------------------------

TWO_RANKS = ["num_clients=6", "local_epochs=1", "data.mean_samples=30", "progress=false", "device=cpu"]


def fedrun_process(*args: str, cwd: Path, **kwargs):
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.Popen([sys.executable, "-m", "fedrun", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.mark.slow  # two ranks start (~15 s)
def test_nproc_prints_a_bad_overrides_sentence_once_and_no_torchrun_traceback(tmp_path):
    proc = fedrun_process("nproc=2", *TWO_RANKS, "rounds=2", "lrr=0.1", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err
    assert err == "fedrun: error: lrr is not a config key: did you mean lr? (a group's keys take its name first, e.g. algo.alpha).\n"


@pytest.mark.slow  # two ranks, killed and resumed (~40 s)
def test_ranks_stop_when_their_launchers_process_group_is_killed(tmp_path):
    """SIGKILL to the launcher's process group (the ranks run in their own sessions) used to leave the
    ranks training to the end: now they get SIGTERM (PR_SET_PDEATHSIG), checkpoint and stop, and the
    same command resumes to the metrics of an uninterrupted 2-rank run."""
    import os
    import signal
    import time

    run_dir, straight = tmp_path / "run", tmp_path / "straight"
    args = ["nproc=2", *TWO_RANKS, "rounds=400", "checkpoint_every=0", "eval_every=50"]
    proc = fedrun_process(*args, f"hydra.run.dir={run_dir}", cwd=tmp_path, start_new_session=True)
    deadline = time.monotonic() + 240
    while not (run_dir / "metrics.csv").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    rank0 = int((run_dir / "run.lock").read_text().split()[0])
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    while time.monotonic() < deadline:
        try:
            os.kill(rank0, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("rank 0 outlived its launcher")
    assert (run_dir / "checkpoint.pt").exists()  # the SIGTERM's checkpoint
    again = fedrun_process(*args, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert again.wait(timeout=600) == 0, again.stderr.read()
    full = fedrun_process(*args, f"hydra.run.dir={straight}", cwd=tmp_path)
    assert full.wait(timeout=600) == 0
    pd.testing.assert_frame_equal(metrics(run_dir), metrics(straight))
