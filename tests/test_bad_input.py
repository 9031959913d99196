"""Issue 15, section 4: every kind of bad input, corrupted file, full disk, signal and bug ends as one
sentence (``fedrun: error: ...``), exit 2 (128+signal for a signal), no traceback, and no files left
behind that the command made (a bug keeps only its ``traceback.txt``).

All in process (``fedrun.cli.main.main()``, the full Hydra path); the real processes are in
tests/test_lock.py and tests/test_finish.py.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from fedrun import runner
from fedrun.cli import main as cli
from fedrun.models import fit
from fedrun.errors import FedrunError
from fedrun.config.checks import option_of
from fedrun.simulation import round as simulation_round
from conftest import compose_config
from tests.test_errors import TINY, cli_error, files_under

pytestmark = pytest.mark.usefixtures("restore_logging")


@pytest.fixture(autouse=True)
def process_state(monkeypatch):
    """cli.main() sets HYDRA_FULL_ERROR and a SIGTERM handler for its process (a test may set SIGINT's): undo them."""
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    old = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in old.items():
        signal.signal(sig, handler)


def snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in files_under(path)}


# (arguments, pieces of the sentence): refused before Hydra starts, so nothing is created
CHECKED_BEFORE_START = [
    (["model=mlp", "model.hidden=[-5]"], ["model.hidden=[-5] is not valid: model=mlp takes a list of layer widths"]),
    (["model=mlp", "model.hidden=[0]"], ["model.hidden=[0] is not valid"]),
    (["model=mlp", "model.hidden=abc"], ["model.hidden=abc", "model.hidden"]),
    (["model=lstm", "model.num_layers=0"], ["model.num_layers=0 is not valid: model=lstm takes a whole number >= 1"]),
    (["partition=unbalanced", "partition.sigma=nan"], ["partition.sigma=nan is not a finite number"]),
    (["partition=unbalanced", "partition.sigma=1e6"], ["partition.sigma=1000000.0 is not valid", "[0, 5]"]),
    (["partition=dirichlet", "partition.alpha=nan"], ["partition.alpha=nan is not a finite number"]),
    (["partition=dirichlet", "partition.alpha=0"], ["partition.alpha=0.0 is not valid", "> 0"]),
    (["data.alpha=nan"], ["data.alpha=nan is not a finite number"]),
    (["data.iid_data=2"], ["data.iid_data=2 is not valid: data.iid_data takes true or false"]),
    (["weight_decay=nan"], ["weight_decay=nan is not a finite number"]),
    (["weight_decay=inf"], ["weight_decay=inf is not a finite number"]),
    (["participation=1e-9"], ["participation=1e-09 with num_clients=5", "sampling=fixed"]),
    (["num_clients=99999999999999999999"], ["num_clients=99999999999999999999 is more than fedrun can index"]),
    (["num_clients=100000", "data.mean_samples=100000000"], ["data=synthetic with data.mean_samples=100000000, num_clients=100000", "more than this machine", "lower data.mean_samples"]),
    (["lr=${oc.env:FEDRUN_TEST_UNSET_VARIABLE}"], ["lr=${oc.env:FEDRUN_TEST_UNSET_VARIABLE} cannot be resolved", "give lr a plain value"]),
    (["hydra.run.dir="], ["hydra.run.dir= is empty"]),
    (["hydra.run.dir=/proc/fedrun_test_dir"], ["hydra.run.dir=/proc/fedrun_test_dir cannot be"]),
    (["hydra.run.dir=<RUN>/my", "runs"], ["'runs' on the command line is not key=value", "must be quoted"]),
    (["sampling=bernoulli_reference", "participation=2"], ["participation=2.0 is out of range"]),
]


@pytest.mark.parametrize("args, pieces", CHECKED_BEFORE_START)
def test_bad_value_is_one_sentence_before_anything_is_written(args, pieces, monkeypatch, capsys, tmp_path):
    args = [a.replace("<RUN>", str(tmp_path / "run")) for a in args]
    if not any(a.startswith("hydra.run.dir") for a in args):
        args.append(f"hydra.run.dir={tmp_path / 'run'}")
    code, sentence = cli_error(monkeypatch, capsys, tmp_path, [*TINY, *args])
    assert code == 2
    for piece in pieces:
        assert piece in sentence, sentence
    assert files_under(tmp_path) == [] and not (tmp_path / "run").exists()


@pytest.mark.parametrize("model", ["lstm", "cnn"])
def test_model_that_does_not_fit_the_data(model, monkeypatch, capsys, tmp_path):
    code, sentence = cli_error(monkeypatch, capsys, tmp_path, [*TINY, f"model={model}", f"hydra.run.dir={tmp_path / 'run'}"])
    assert code == 2 and sentence.startswith(f"model={model} does not fit data=synthetic, whose inputs are (30,) float32")
    assert "character sequences: lstm" in sentence
    assert files_under(tmp_path) == [], "the run dir Hydra made (.hydra/, cli.log) must go"


def test_logreg_on_character_indices_does_not_fit():
    data = SimpleNamespace(x_train=torch.zeros(4, 80, dtype=torch.long), input_shape=(80,), num_classes=80, name="shakespeare")
    with pytest.raises(FedrunError, match=r"model=LogisticRegression does not fit data=shakespeare, whose inputs are \(80,\) int64"):
        cfg = compose_config("model=logreg")
        fit.build_model(cfg.model, option_of(cfg, "model"), data)


@pytest.mark.parametrize(
    "damage, piece",
    [
        ("summary_list", "summary.json is not a summary fedrun wrote"),
        ("summary_types", "summary.json is not a summary fedrun wrote"),
        ("metrics_dir", "metrics.csv is not a file"),
        ("metrics_only", "metrics.csv was written by an earlier run that left no checkpoint or summary.json"),
    ],
)
def test_corrupted_run_dir_is_refused_and_left_as_it_was(damage, piece, monkeypatch, capsys, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    if damage == "summary_list":
        (run_dir / "summary.json").write_text("[]")
    elif damage == "summary_types":
        (run_dir / "summary.json").write_text(json.dumps({"status": 5, "config": "x"}))
    elif damage == "metrics_dir":
        (run_dir / "metrics.csv").mkdir()
        (run_dir / "metrics.csv" / "x").write_text("x")
    else:  # killed before its first checkpoint by an older fedrun (no summary.json at start)
        (run_dir / "metrics.csv").write_text("round,test_acc\n1,0.5\n")
    before = snapshot(tmp_path)
    code, sentence = cli_error(monkeypatch, capsys, tmp_path, [*TINY, "lr=0.05", f"hydra.run.dir={run_dir}"])
    assert code == 2 and piece in sentence and "resume=false" in sentence
    assert snapshot(tmp_path) == before


def test_run_killed_before_its_first_checkpoint_keeps_its_config(monkeypatch, capsys, tmp_path):
    """A fresh run writes summary.json (status running, its config) first: a kill before the first
    checkpoint leaves metrics.csv that another config is refused on, and the same config starts over."""
    from tests.test_errors import stop_after

    cfg = compose_config(*TINY, "checkpoint_every=0")
    stop_after(cfg, tmp_path / "run", 2)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "failed"
    (tmp_path / "run" / "summary.json").write_text(json.dumps({"status": "running", "config": json.loads((tmp_path / "run" / "summary.json").read_text())["config"]}))
    code, sentence = cli_error(monkeypatch, capsys, tmp_path, [*TINY, "checkpoint_every=0", "lr=0.05", f"hydra.run.dir={tmp_path / 'run'}"])
    assert code == 2 and "cannot resume" in sentence and "lr (0.1 there, 0.05 now)" in sentence
    summary = runner.run(cfg, tmp_path / "run")  # the same config starts over
    assert summary["status"] == "finished" and summary["rounds_done"] == 4


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device", "/full/disk/file")


@pytest.mark.parametrize("where", ["checkpoint", "plot"])
def test_full_disk_is_one_sentence_and_leaves_no_tmp_files(where, monkeypatch, capsys, tmp_path):
    run_dir = tmp_path / "run"
    if where == "checkpoint":
        real = torch.save

        def save(obj, f, *a, **k):  # the checkpoint's first bytes are written, then the disk is full
            if hasattr(f, "write"):
                f.write(b"partial")
                enospc()
            return real(obj, f, *a, **k)

        monkeypatch.setattr(torch, "save", save)
    else:
        def plot(rows, path, title, **_):
            Path(path).write_bytes(b"partial png")
            enospc()

        monkeypatch.setattr(runner, "convergence_plot", plot)
    code, sentence = cli_error(monkeypatch, capsys, tmp_path, [*TINY, "checkpoint_every=1", f"hydra.run.dir={run_dir}"])
    written = run_dir / ("checkpoint.pt" if where == "checkpoint" else "convergence.png")
    assert code == 2 and sentence.startswith(f"the disk is full (no space left while writing {written}, which needs about ")
    assert not [p for p in files_under(run_dir) if "tmp" in p.name]
    assert not (run_dir / "convergence.png").exists()  # the test process draws no figure; the full disk one is gone
    assert (run_dir / "checkpoint.pt").exists() == (where == "plot")  # what a rerun continues from


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_start_up(signum, monkeypatch, capsys, tmp_path):
    """Ctrl-C (SIGINT) or SIGTERM while the data is built: a sentence, 128+signal, no run dir.

    SIGINT needs Python's own handler (``KeyboardInterrupt``), which Python installs at start-up only
    when SIGINT is not ignored; a pytest started from a non-interactive shell in the background
    (``make test &``, nohup, some CI runners) inherits SIGINT ignored, and then the signal did
    nothing and this test failed, in that process only (whatever the order). So the test sets the
    handler an interactive terminal's Ctrl-C meets (``process_state`` puts the old one back)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)

    def build(*args, **kwargs):
        os.kill(os.getpid(), signum)  # Ctrl-C / a scheduler's SIGTERM while the data is being built
        raise AssertionError("the signal should have stopped start-up")

    monkeypatch.setattr(runner, "build", build)
    code, sentence = cli_error(monkeypatch, capsys, tmp_path, [*TINY, f"hydra.run.dir={tmp_path / 'run'}"])
    assert code == 128 + signum and sentence.startswith(f"stopped by {signal.Signals(signum).name} before the run's rounds began")
    assert files_under(tmp_path) == []


def test_signal_during_the_final_plot_waits_for_the_outputs(monkeypatch, capsys, tmp_path):
    """A first SIGTERM while the last outputs are written does not cut them short: the run finishes."""
    import fedrun.observers.plot

    real = fedrun.observers.plot.convergence_plot

    def plot(rows, path, title, **_):
        os.kill(os.getpid(), signal.SIGTERM)
        real(rows, path, title)

    monkeypatch.setattr(runner, "convergence_plot", plot)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["fedrun", *TINY, f"hydra.run.dir={tmp_path / 'run'}"])
    cli.main()
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "finished"
    assert (tmp_path / "run" / "convergence.png").stat().st_size > 1000


def test_unexpected_error_names_its_traceback_file(monkeypatch, capsys, tmp_path):
    def evaluate(*args):
        raise ZeroDivisionError("float division by zero")

    monkeypatch.setattr(simulation_round, "evaluate", evaluate)
    run_dir = tmp_path / "run"
    code, sentence = cli_error(monkeypatch, capsys, tmp_path, [*TINY, f"hydra.run.dir={run_dir}"])
    assert code == 2
    assert sentence == (
        "unexpected error (ZeroDivisionError: float division by zero); this is a bug or an unsupported setup, "
        f"the full traceback is in {run_dir / 'traceback.txt'}."
    )
    assert "Traceback (most recent call last)" in (run_dir / "traceback.txt").read_text()
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"


def test_unexpected_error_before_any_output_keeps_only_the_traceback(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(runner, "build", lambda *a, **k: {}["no such key"])
    code, sentence = cli_error(monkeypatch, capsys, tmp_path, [*TINY, f"hydra.run.dir={tmp_path / 'run'}"])
    assert code == 2 and sentence.startswith("unexpected error (KeyError: 'no such key')")
    assert [p.name for p in files_under(tmp_path)] == ["traceback.txt"]


@pytest.mark.parametrize("sigma", ["50", "20"])
def test_synthetic_sizes_too_large_name_sigma(sigma, monkeypatch, capsys, tmp_path):
    """A huge data.sigma makes the lognormal device sizes explode (sigma=50: sizes past int64, which
    torch's allocation reported as an overflow, blamed on the command line; sigma=20 with 5 devices
    of mean 30: 1.7e11 samples in all with seed 0, 41 TB, far more memory than any machine): one sentence naming
    data.sigma and data.mean_samples, before any sample is drawn, and no run dir left."""
    code, sentence = cli_error(monkeypatch, capsys, tmp_path, [*TINY, f"data.sigma={sigma}", f"hydra.run.dir={tmp_path / 'run'}"])
    assert code == 2 and "composed" not in sentence, sentence
    assert sentence.startswith(f"data=synthetic with data.sigma={float(sigma)} and data.mean_samples=30 draws"), sentence
    assert "lower data.sigma or data.mean_samples" in sentence
    assert files_under(tmp_path) == []


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_damaged_dataset_cache_is_rebuilt_once_else_one_sentence_naming_it(damage, monkeypatch, capsys, tmp_path):
    """A cache file cut short or overwritten with junk, through the CLI: with the source files there
    the run rebuilds it (one warning saying so) and finishes; with them gone, one sentence naming the
    cache file, exit 2, no run dir left."""
    import vision_files as vf

    data = tmp_path / "data"
    vf.write_mnist(data, 30, 10)
    args = ["data=mnist", f"data.root={data}", "data.download=false", "model=logreg", "partition=iid", *(a for a in TINY if not a.startswith("data.")), "rounds=1"]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["fedrun", *args, f"hydra.run.dir={tmp_path / 'first'}"])
    cli.main()
    entry = data / "fedrun_cache" / "mnist.pt"
    whole = entry.read_bytes()
    entry.write_bytes(b"junk" * 50 if damage == "garbage" else whole[: len(whole) // 2])
    monkeypatch.setattr(sys, "argv", ["fedrun", *args, f"hydra.run.dir={tmp_path / 'second'}"])
    cli.main()
    log_text = (tmp_path / "second" / "cli.log").read_text()
    assert log_text.count(f"the dataset cache {entry} is damaged") == 1 and "rebuilding it from the source files" in log_text
    assert entry.read_bytes() == whole  # rebuilt: the same conversion of the same files
    entry.write_bytes(whole[:-10])
    for f in (data / "MNIST" / "raw").iterdir():
        f.unlink()
    capsys.readouterr()
    code, sentence = cli_error(monkeypatch, capsys, tmp_path, [*args, f"hydra.run.dir={tmp_path / 'third'}"])
    assert code == 2 and sentence.startswith(f"the dataset cache {entry} is damaged (stale or truncated) and rebuilding it failed: "), sentence
    assert not (tmp_path / "third").exists()


@pytest.mark.parametrize("every", [0, 3])
def test_two_signals_during_the_final_plot_say_what_the_run_dir_holds(every, monkeypatch, capsys, tmp_path):
    """Two SIGINTs while the last outputs are written: the second stops the writing, exit 130, with a
    sentence saying so and what the run dir holds (it used to say "before the round finished").
    TINY has 4 rounds; a checkpoint is due at rounds divisible by checkpoint_every before the last,
    so checkpoint_every=3 leaves checkpoint.pt of round 3 and checkpoint_every=0 none. Rerunning the
    same command then finishes the run with the rows of an uninterrupted run."""
    import fedrun.observers.plot

    signal.signal(signal.SIGINT, signal.default_int_handler)  # see test_signal_during_start_up
    real = fedrun.observers.plot.convergence_plot
    args = [*TINY, f"checkpoint_every={every}"]
    run_dir = tmp_path / "run"

    def plot(rows, path, title, **_):
        os.kill(os.getpid(), signal.SIGINT)  # the first: waits for the outputs
        os.kill(os.getpid(), signal.SIGINT)  # the second: stops them
        real(rows, path, title)

    monkeypatch.setattr(runner, "convergence_plot", plot)
    code, sentence = cli_error(monkeypatch, capsys, tmp_path, [*args, f"hydra.run.dir={run_dir}"])
    assert code == 130
    start = "stopped by a second SIGINT while writing the run's last outputs (convergence plot, summary.json) after all 4 rounds; "
    held = (f"{run_dir} holds metrics.csv with all 4 rounds and checkpoint.pt of round 3: rerun the same command to finish "
            "(it reruns rounds 4 to 4 from that checkpoint)." if every else
            f"{run_dir} holds metrics.csv with all 4 rounds but no checkpoint (none was due before the last round): "
            "rerun the same command to run it again from the start (or keep metrics.csv as it is).")
    assert sentence == start + held
    assert (run_dir / "checkpoint.pt").exists() == bool(every)
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == 1 + 4
    monkeypatch.setattr(runner, "convergence_plot", real)
    monkeypatch.setattr(sys, "argv", ["fedrun", *args, f"hydra.run.dir={run_dir}"])
    cli.main()
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"
    monkeypatch.setattr(sys, "argv", ["fedrun", *args, f"hydra.run.dir={tmp_path / 'whole'}"])
    cli.main()
    import pandas as pd

    cols = lambda d: pd.read_csv(d / "metrics.csv").drop(columns=["wall_s"])  # noqa: E731 - wall time differs
    pd.testing.assert_frame_equal(cols(run_dir), cols(tmp_path / "whole"))


@pytest.mark.parametrize("override,first", [("data.dim=100000000", "data.dim"), ("num_clients=2000000000", "num_clients"),
                                            ("data.mean_samples=10000000000", "data.mean_samples")])
def test_synthetic_data_too_large_for_memory_names_the_key_that_makes_it(override: str, first: str):
    """20 clients x 200 samples x 10^8 features in float64 is ~3 PB: the sentence names data.dim first
    (the factor furthest over the paper's example), not num_clients."""
    from fedrun.config import specs

    with pytest.raises(FedrunError) as err:
        specs.read(compose_config(override))
    sentence = str(err.value)
    assert f"lower {first} (or " in sentence and "of memory (clients x samples x features)" in sentence, sentence
