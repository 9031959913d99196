"""fedrun's default sweeper (fedrun/cli/sweeper.py): a key of an option's own hyperparameters applies
only to the jobs whose chosen option has it; the job lists of the issue's commands, exactly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fedrun.config.schema import CONF_DIR, register_configs
from fedrun.errors import FedrunError
from fedrun.cli.sweeper import FedrunSweeper, plan

REPO = Path(__file__).resolve().parent.parent


def sweeper_jobs(*overrides: str) -> list[frozenset[str]]:
    """The job list of the real FedrunSweeper for ``fedrun -m OVERRIDES``, launched nowhere: the master
    config composed as Hydra does for a multirun (sweeps left out), then the sweeper's split_arguments."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import HydraContext

    register_configs()
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    base = [o for o, p in zip(overrides, parsed) if not p.is_sweep_override()]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", base, return_hydra_config=True)
        sweeper = FedrunSweeper(**{k: v for k, v in cfg.hydra.sweeper.items() if k != "_target_"})
        sweeper.config, sweeper.hydra_context = cfg, HydraContext(config_loader=GlobalHydra.instance().config_loader(), callbacks=None)
        batches = sweeper.split_arguments(OverridesParser.create().parse_overrides(sweeper._parse_config() + list(overrides)), None)  # as sweep(): params first
    return [frozenset(job) for batch in batches for job in batch]


def test_three_algorithms_two_alphas_two_mus_two_seeds_run_exactly_ten_jobs(capsys):
    """3 x 2 x 2 x 2 = 24 combinations; FedDyn keeps alpha only (2 alpha x 2 seeds), FedProx mu only
    (2 mu x 2 seeds), FedAvg neither (2 seeds): 4 + 4 + 2 = 10 distinct jobs."""
    jobs = sweeper_jobs("algo=feddyn,fedprox,fedavg", "algo.alpha=0.1,0.01", "algo.mu=0.01,0.001", "seed=0,1")
    expected = {frozenset({"algo=feddyn", f"algo.alpha={a}", f"seed={s}"}) for a in ("0.1", "0.01") for s in (0, 1)}
    expected |= {frozenset({"algo=fedprox", f"algo.mu={m}", f"seed={s}"}) for m in ("0.01", "0.001") for s in (0, 1)}
    expected |= {frozenset({"algo=fedavg", f"seed={s}"}) for s in (0, 1)}
    assert len(jobs) == 10 and set(jobs) == expected
    line = capsys.readouterr().out
    assert "sweep of 10 jobs (24 combinations; algo.alpha applies to feddyn only; algo.mu applies to fedprox only)" in line


def test_partition_sweep_gives_three_settings():
    jobs = sweeper_jobs("partition=iid,dirichlet", "partition.alpha=0.3,0.6", "data=cifar10")
    assert set(jobs) == {frozenset({"partition=iid", "data=cifar10"}),
                         frozenset({"partition=dirichlet", "partition.alpha=0.3", "data=cifar10"}),
                         frozenset({"partition=dirichlet", "partition.alpha=0.6", "data=cifar10"})}
    assert len(jobs) == 3


def test_the_done_when_command_runs_three_jobs_and_keys_of_every_option_stay():
    assert set(sweeper_jobs("algo=feddyn,fedavg", "algo.alpha=0.1,0.01", "seed=0")) == {
        frozenset({"algo=feddyn", "algo.alpha=0.1", "seed=0"}), frozenset({"algo=feddyn", "algo.alpha=0.01", "seed=0"}),
        frozenset({"algo=fedavg", "seed=0"})}
    # a preset has its base's keys; a key every chosen option has is never dropped
    jobs = sweeper_jobs("algo=feddyn,feddyn_alpha0.1", "algo.alpha=0.5")
    assert set(jobs) == {frozenset({"algo=feddyn", "algo.alpha=0.5"}), frozenset({"algo=feddyn_alpha0.1", "algo.alpha=0.5"})}
    # a plain sweep without group keys is BasicSweeper's product, in its order
    assert sweeper_jobs("seed=0,1", "lr=0.1,0.05") == [frozenset({f"seed={s}", f"lr={lr}"}) for s in (0, 1) for lr in ("0.1", "0.05")]


def test_a_key_that_applies_to_no_chosen_option_stops_the_sweep_with_one_sentence():
    with pytest.raises(FedrunError, match=r"^algo\.alpha is a key of none of the chosen options algo=fedavg,fedprox: drop algo\.alpha"):
        sweeper_jobs("algo=fedavg,fedprox", "algo.alpha=0.1,0.01")


def test_plan_merges_duplicates_keeps_first_order_and_reports_what_it_dropped():
    """A pure check of plan() with a hand-made option table: x has k, y has none."""
    has = {("g=x",): {"g.k"}, ("g=y",): set()}
    combos = [["g=x", "g.k=1"], ["g=x", "g.k=2"], ["g=y", "g.k=1"], ["g=y", "g.k=2"]]
    p = plan(combos, {"g": "x"}, lambda choices, key: key in has[choices])
    assert p.jobs == [["g=x", "g.k=1"], ["g=x", "g.k=2"], ["g=y"]]
    assert p.kept == {"g.k": ["x"]} and p.dropped == {"g.k": ["y"]} and p.combinations == 4
    # the group's choice from the config when a combination does not name it
    p = plan([["g.k=1"], ["g.k=2"]], {"g": "x"}, lambda choices, key: choices == () and key == "g.k")
    assert p.jobs == [["g.k=1"], ["g.k=2"]] and p.dropped == {}


def test_precheck_composes_the_sweepers_jobs_and_refuses_before_any_job(tmp_path, monkeypatch):
    from fedrun.cli.precheck import precheck

    monkeypatch.chdir(tmp_path)
    register_configs()
    prepared = precheck(["-m", "algo=fedprox,fedavg", "algo.mu=0.1", "seed=0", f"hydra.sweep.dir={tmp_path / 's'}"])
    assert "algo.mu=choice(0.1)" in prepared.argv  # a key the default option (FedDyn) lacks: a one-value sweep
    prepared = precheck(["-m", "algo=feddyn,fedavg", "algo.alpha=0.1", "seed=0", f"hydra.sweep.dir={tmp_path / 's'}"])
    assert "algo.alpha=0.1" in prepared.argv  # the default option has it: left as it is
    with pytest.raises(FedrunError, match="algo.mu is a key of none"):
        precheck(["-m", "algo=fedavg,feddyn", "algo.mu=0.1,0.2", f"hydra.sweep.dir={tmp_path / 's'}"])


def test_experiment_yaml_sweeper_params_are_filtered_too(tmp_path):
    """An experiment's hydra.sweeper.params are swept like the command line's (an experiment stored in
    Hydra's ConfigStore, as a yaml in conf/experiment/ would be)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(group="experiment", name="test_sweep_params", package="_global_",
                                 node={"hydra": {"sweeper": {"params": {"algo": "feddyn,fedavg", "algo.alpha": "0.1,0.01"}}}})
    jobs = sweeper_jobs("experiment=test_sweep_params", "seed=0")
    jobs = [j - {"experiment=test_sweep_params"} for j in jobs]
    assert set(jobs) == {frozenset({"algo=feddyn", "algo.alpha=0.1", "seed=0"}),
                         frozenset({"algo=feddyn", "algo.alpha=0.01", "seed=0"}), frozenset({"algo=fedavg", "seed=0"})}


@pytest.mark.slow
def test_joblib_launches_the_sweepers_job_list(tmp_path):
    """The real command with the joblib launcher: 3 job dirs whose overrides are the 3 jobs."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = tmp_path / "sweep"
    tiny = ["num_clients=4", "data.mean_samples=20", "local_epochs=1", "participation=0.5", "rounds=1", "quiet=true"]
    proc = subprocess.run([sys.executable, "-m", "fedrun", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                           "algo=feddyn,fedavg", "algo.alpha=0.1,0.01", "seed=0", *tiny, f"hydra.sweep.dir={sweep}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sweep of 3 jobs (4 combinations; algo.alpha applies to feddyn only)" in proc.stdout
    jobs = {frozenset(o for o in yaml.safe_load((d / ".hydra" / "overrides.yaml").read_text()) if o.startswith(("algo", "seed")))
            for d in sweep.iterdir() if (d / ".hydra").is_dir()}
    assert jobs == {frozenset({"algo=feddyn", "algo.alpha=0.1", "seed=0"}), frozenset({"algo=feddyn", "algo.alpha=0.01", "seed=0"}),
                    frozenset({"algo=fedavg", "seed=0"})}


def test_an_install_without_the_sweepers_plugin_gets_one_sentence(tmp_path, monkeypatch):
    """An editable install made before hydra_plugins/fedrun_sweeper existed cannot load the default
    sweeper: the pre-check says what to do instead of Hydra's 'Unknown plugin class'."""
    import importlib.util

    from fedrun.cli.precheck import precheck

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "hydra_plugins.fedrun_sweeper" else real(name, *a))
    monkeypatch.chdir(tmp_path)
    register_configs()
    with pytest.raises(FedrunError, match=r"not installed: run `pip install -e \.` again"):
        precheck(["-m", "seed=0,1", f"hydra.sweep.dir={tmp_path / 's'}"])
    precheck(["-m", "seed=0,1", "hydra/sweeper=basic", f"hydra.sweep.dir={tmp_path / 's'}"])  # Hydra's own still works
