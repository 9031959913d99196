"""fedrun-report on hand-written run directories: rounds to target, statuses, speed-up, figures."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest

from fedrun.report import cli as report
from fedrun.report.runs import comm_to_target, find_runs, rounds_to_target

TARGET_ALGOS = {"fedavg": "fedrun.algorithms.fedavg.FedAvg", "feddyn": "fedrun.algorithms.feddyn.FedDyn", "scaffold": "fedrun.algorithms.scaffold.Scaffold"}


def metrics(accs: list[float], rounds: list[int] | None = None, comm_per_round: float = 1.0) -> pd.DataFrame:
    rounds = rounds or list(range(1, len(accs) + 1))
    return pd.DataFrame({"round": rounds, "test_acc": accs, "comm_fedavg_rounds": [comm_per_round * r for r in rounds], "wall_s": [0.5 * r for r in rounds]})


def write_run(path: Path, algo: str, seed: int, accs: list[float] | None, status: str | None = "finished",
              comm_per_round: float = 1.0, extra_algo: dict | None = None) -> Path:
    """A run directory as fedrun writes it: .hydra/config.yaml, metrics.csv, summary.json."""
    path.mkdir(parents=True)
    config = {"algo": {"_target_": TARGET_ALGOS[algo], **(extra_algo or {})}, "data": {"_target_": "fedrun.data.synthetic.make_synthetic", "dim": 30},
              "seed": seed, "lr": 0.1, "rounds": 6, "targets": [0.5, 0.8], "progress": None}
    (path / ".hydra").mkdir()
    (path / ".hydra" / "config.yaml").write_text(json.dumps(config))  # JSON is YAML
    (path / ".hydra" / "hydra.yaml").write_text(json.dumps({"hydra": {"runtime": {"choices": {"algo": algo, "data": "synthetic"}}}}))
    if accs is not None:
        metrics(accs, comm_per_round=comm_per_round).to_csv(path / "metrics.csv", index=False)
    if status is not None:
        summary = {"status": status, "rounds_done": len(accs or []), "seconds": 3.0, "config": config}
        (path / "summary.json").write_text(json.dumps(summary))
    return path


# --- rounds to target ---------------------------------------------------------------------------


def test_rounds_to_target_is_first_round_at_or_above_target():
    m = metrics([0.1, 0.5, 0.45, 0.8, 0.79])
    assert rounds_to_target(m, 0.5) == 2  # equal counts as reached
    assert rounds_to_target(m, 0.45) == 2  # first, not the round where it equals the target
    assert rounds_to_target(m, 0.8) == 4
    assert rounds_to_target(m, 0.05) == 1
    assert rounds_to_target(m, 50) == 2  # a percentage is read as 0.5


def test_rounds_to_target_never_reached_is_nan_not_zero():
    m = metrics([0.1, 0.2, 0.3])
    assert math.isnan(rounds_to_target(m, 0.9))
    assert math.isnan(comm_to_target(m, 0.9))
    assert math.isnan(rounds_to_target(pd.DataFrame(), 0.5))
    assert math.isnan(rounds_to_target(pd.DataFrame({"round": [1, 2]}), 0.5))  # no accuracy column


def test_rounds_to_target_with_sparse_evaluation_and_double_communication():
    m = metrics([0.2, 0.6, 0.9], rounds=[5, 10, 15], comm_per_round=2.0)  # eval_every=5, SCAFFOLD sends twice
    assert rounds_to_target(m, 0.6) == 10
    assert comm_to_target(m, 0.6) == 20.0


# --- the report -----------------------------------------------------------------------------------


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "sweep"
    # FedAvg reaches 0.5 in rounds 4 and 6 (mean 5); FedDyn in rounds 2 and 2; FedDyn reaches 0.8, FedAvg never.
    write_run(root / "0_fedavg_s0", "fedavg", 0, [0.1, 0.2, 0.3, 0.5, 0.6, 0.7])
    write_run(root / "1_fedavg_s1", "fedavg", 1, [0.1, 0.2, 0.3, 0.4, 0.45, 0.55])
    write_run(root / "2_feddyn_s0", "feddyn", 0, [0.3, 0.6, 0.7, 0.8, 0.85, 0.9], extra_algo={"alpha": 0.01})
    write_run(root / "3_feddyn_s1", "feddyn", 1, [0.4, 0.5, 0.75, 0.82, 0.86, 0.88], extra_algo={"alpha": 0.01})
    return root


def test_report_table_columns_values_and_files(sweep: Path):
    made = report.report([sweep])
    table = pd.read_csv(sweep / "runs.csv")
    assert len(table) == 4 and made["runs"] == 4
    assert list(table.columns[:2]) == ["algo", "seed"]  # only the varying keys, seed last; algo.alpha is FedDyn's only and constant
    assert table["method"].tolist() == ["FedAvg", "FedAvg", "FedDyn", "FedDyn"]  # display labels, FedAvg first, seeds in order
    assert "lr" not in table.columns and "data" not in table.columns
    by = table.set_index(["algo", "seed"])
    assert by.loc[("fedavg", 0), "rounds_to_50"] == 4
    assert by.loc[("fedavg", 1), "rounds_to_50"] == 6
    assert math.isnan(by.loc[("fedavg", 1), "rounds_to_80"])
    assert by.loc[("feddyn", 1), "rounds_to_80"] == 4
    assert by.loc[("feddyn", 0), "final_acc"] == pytest.approx(90.0) and by.loc[("fedavg", 1), "best_acc"] == pytest.approx(55.0)  # percent
    assert (table["status"] == "finished").all()
    assert made["targets"] == [0.5, 0.8]  # taken from the runs' `targets` config
    for name in ["runs.md", "final.csv", "final.md", "final.tex", "targets.csv", "targets.md", "paper_table.md", "paper_table.csv",
                 "paper_table.tex", "convergence.png", "convergence.pdf", "convergence.svg"]:
        assert (sweep / name).stat().st_size > 0
    assert made["curves"] == 2  # one mean ± std curve per algorithm, seeds pooled


def test_target_table_means_over_seeds_and_speedup_over_fedavg(sweep: Path):
    tt = report.report([sweep], figures=False)["target_table"].set_index(["algo", "target_acc"])
    # rounds 4 and 6: mean 5, sample std sqrt(((4-5)^2 + (6-5)^2) / (2-1)) = sqrt(2)
    assert tt.loc[("fedavg", 50.0), "rounds"] == 5.0 and tt.loc[("fedavg", 50.0), "rounds_std"] == pytest.approx(math.sqrt(2))
    assert tt.loc[("feddyn", 50.0), "rounds"] == 2.0
    assert tt.loc[("feddyn", 50.0), "speedup"] == pytest.approx(2.5)
    assert math.isnan(tt.loc[("fedavg", 80.0), "rounds"]) and tt.loc[("fedavg", 80.0), "reached"] == 0
    assert tt.loc[("feddyn", 80.0), "rounds"] == 4.0  # rounds 4 and 4
    assert math.isnan(tt.loc[("feddyn", 80.0), "speedup"])  # FedAvg never got there: no number invented...
    assert tt.loc[("feddyn", 80.0), "speedup_above"] == pytest.approx(6 / 4)  # ...but "more than" its 6 rounds / FedDyn's 4


def test_communication_counts_scaffold_double(tmp_path: Path):
    write_run(tmp_path / "a", "fedavg", 0, [0.2, 0.6])
    write_run(tmp_path / "b", "scaffold", 0, [0.6, 0.7], comm_per_round=2.0)
    tt = report.report([tmp_path], targets=[0.6], figures=False)["target_table"].set_index("algo")
    assert tt.loc["scaffold", "rounds"] == 1 and tt.loc["scaffold", "comm_fedavg_rounds"] == 2
    assert tt.loc["scaffold", "speedup"] == pytest.approx(2.0)  # FedAvg's 2 rounds / SCAFFOLD's 1 (its communication: the same 2)
    assert report.paper_table(tt.reset_index()).iloc[0]["SCAFFOLD"] == "1 (2×) [comm. 2]"


def test_report_marks_failed_unfinished_diverged_and_broken_runs_without_crashing(sweep: Path):
    write_run(sweep / "4_failed", "fedavg", 2, [0.1, 0.3], status="failed")
    write_run(sweep / "5_diverged", "fedavg", 3, [0.1, float("nan")], status="diverged")
    write_run(sweep / "6_unfinished", "feddyn", 2, [0.2], status=None, extra_algo={"alpha": 0.01})  # killed: no summary
    write_run(sweep / "7_running", "feddyn", 3, [0.2], status="running", extra_algo={"alpha": 0.01})
    write_run(sweep / "7b_interrupted", "feddyn", 4, [0.2], status="interrupted", extra_algo={"alpha": 0.01})
    broken = write_run(sweep / "8_broken", "fedavg", 4, None, status="finished")
    (broken / "summary.json").write_text("{not json")
    (broken / "metrics.csv").write_text("")
    empty = sweep / "9_started"  # Hydra wrote its config, the run died before any round
    (empty / ".hydra").mkdir(parents=True)
    (empty / ".hydra" / "config.yaml").write_text("")
    made = report.report([sweep], targets=[0.5])
    table = pd.read_csv(sweep / "runs.csv").set_index("path")
    status = {Path(p).name: s for p, s in table["status"].items()}
    assert len(table) == 11
    assert status["4_failed"] == "failed" and status["5_diverged"] == "diverged"
    assert status["6_unfinished"] == status["7_running"] == status["7b_interrupted"] == "unfinished"
    assert status["8_broken"] == "broken" and status["9_started"] == "broken"
    assert sum(s == "finished" for s in status.values()) == 4
    good = table[table["status"] == "finished"]
    assert sorted(good["rounds_to_50"].tolist()) == [2, 2, 4, 6]  # the good runs are unaffected
    assert "summary.json unreadable" in table.loc[str((sweep / "8_broken").resolve()), "problems"]
    # only finished and diverged runs enter the target table
    tt = made["target_table"].set_index("algo")
    assert tt.loc["fedavg", "runs"] == 3  # two finished + the diverged one; the failed and broken are not counted
    assert tt.loc["feddyn", "runs"] == 2  # the unfinished ones are not counted either
    assert "failed" in (sweep / "runs.md").read_text()


def test_find_runs_recurses_and_ignores_non_runs(tmp_path: Path):
    write_run(tmp_path / "a" / "b" / "run1", "fedavg", 0, [0.5])
    write_run(tmp_path / "c" / "run2", "fedavg", 1, [0.5])
    (tmp_path / "c" / "notes").mkdir()
    (tmp_path / "c" / "multirun.yaml").write_text("x: 1\n")
    found = find_runs([tmp_path / "a", tmp_path])
    assert [p.name for p in found] == ["run1", "run2"]


def test_published_numbers_join_on_shared_keys(sweep: Path, tmp_path: Path):
    pub = tmp_path / "published.csv"
    pd.DataFrame({"algo": ["feddyn", "fedavg"], "target_acc": [50.0, 50.0], "published_rounds": [67, 754]}).to_csv(pub, index=False)
    tt = report.report([sweep], out=tmp_path / "out", published=pub, figures=False)["target_table"]
    got = tt.set_index(["algo", "target_acc"])["published_rounds"]
    assert got[("feddyn", 50.0)] == 67 and got[("fedavg", 50.0)] == 754
    assert math.isnan(got[("feddyn", 80.0)])  # nothing published for that target: empty, not invented
    assert (tmp_path / "out" / "runs.csv").exists() and not (sweep / "runs.csv").exists()
    wide = report.paper_table(tt).set_index("target (%)")
    assert wide.loc["50", "FedDyn"] == "2 ± 0 (2.5×) [published 67]"  # FedDyn: rounds 2 and 2; FedAvg: 4 and 6
    assert wide.loc["50", "FedAvg"] == "5 ± 1.4 (1×) [published 754]"
    assert wide.loc["80", "FedAvg"] == "not in 6"
    assert wide.loc["80", "FedDyn"] == "4 ± 0 (>1.5×)"
    header = next(line for line in (tmp_path / "out" / "paper_table.md").read_text().splitlines() if line.startswith("|"))
    assert [c.strip() for c in header.strip("|").split("|")] == ["target (%)", "FedAvg", "FedDyn"]


def test_cli_exit_codes(sweep: Path, tmp_path: Path, capsys):
    assert report.main([str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert report.main([str(sweep), "--targets", "80", "--group-by", "algo", "--no-figures"]) == 0
    out = capsys.readouterr().out
    assert "4 runs (4 finished)" in out
    assert "rounds_to_80" in pd.read_csv(sweep / "runs.csv").columns
    assert not (sweep / "convergence.png").exists()


def test_published_numbers_of_another_dataset_are_not_attached(sweep: Path, tmp_path: Path):
    pub = tmp_path / "published.csv"  # the runs are all synthetic: the data column is constant, not varying
    pd.DataFrame({"data": ["cifar10"], "algo": ["feddyn"], "target_acc": [50.0], "published_rounds": [67]}).to_csv(pub, index=False)
    tt = report.report([sweep], published=pub, figures=False)["target_table"]
    assert tt["published_rounds"].isna().all()
    (sweep / "00_broken").mkdir()  # a broken run (no config) must not make the data key unknown
    (sweep / "00_broken" / "summary.json").write_text("{")
    tt = report.report([sweep], published=pub, figures=False)["target_table"]
    assert tt["published_rounds"].isna().all()
    pub.write_text("data,algo,target_acc,published_rounds\nsynthetic,feddyn,50,3\n")
    tt = report.report([sweep], published=pub, figures=False)["target_table"].set_index(["algo", "target_acc"])
    assert tt.loc[("feddyn", 50.0), "published_rounds"] == 3 and math.isnan(tt.loc[("fedavg", 50.0), "published_rounds"])


def test_facet_draws_one_grid_with_a_panel_per_value(sweep: Path):
    made = report.report([sweep], group_by=["algo"], facet=["seed"])
    assert {"facets.png", "facets.pdf", "facets.svg"} <= set(made["files"])
    assert all((sweep / f).stat().st_size > 0 for f in made["files"])
    from fedrun.report.figures import facet_figure

    table, runs, keys, _ = report.collect([sweep])
    assert facet_figure(runs, table, ["seed", "algo"], None, sweep / "grid.png", keys=keys) == (2, 2)  # seeds x algorithms


# --- loss metrics, the final table, labels --------------------------------------------------------


def test_loss_metric_is_not_a_percentage_and_best_is_the_minimum(tmp_path: Path):
    """test_loss of one run: 2.0, 0.5, 0.8 -> final 0.8, best 0.5 (the minimum), no x100; a loss
    target 0.9 is reached at or below it, in round 2 (0.5), not round 1 (2.0 >= 0.9)."""
    run = write_run(tmp_path / "a", "fedavg", 0, [0.1, 0.6, 0.5])
    m = pd.read_csv(run / "metrics.csv").assign(test_loss=[2.0, 0.5, 0.8])
    m.to_csv(run / "metrics.csv", index=False)
    made = report.report([tmp_path], metric="test_loss", targets=[0.9])
    row = made["table"].iloc[0]
    assert "final_acc" not in made["table"] and "best_acc" not in made["table"]
    assert row["final_loss"] == pytest.approx(0.8) and row["best_loss"] == pytest.approx(0.5)
    assert row["rounds_to_0.9"] == 2
    assert made["target_table"]["target_loss"].tolist() == [0.9]
    assert "(%)" not in (tmp_path / "final.md").read_text()
    assert made["curves"] == 1


def test_final_table_is_mean_and_sample_std_per_setting_sorted(sweep: Path):
    """FedDyn final 0.9 and 0.88 -> 89.00 ± sqrt(2)=1.41 (ddof=1); FedAvg best 0.7 and 0.55 -> 62.50 ± 10.61."""
    made = report.report([sweep], figures=False)
    final = made["final_table"]
    assert final["algo"].tolist() == ["fedavg", "feddyn"]  # sorted by setting
    dyn = final.set_index("algo").loc["feddyn"]
    assert dyn["runs"] == 2 and dyn["final_acc_mean"] == pytest.approx(89.0) and dyn["final_acc_std"] == pytest.approx(math.sqrt(2))
    assert final.set_index("algo").loc["fedavg", "best_acc_std"] == pytest.approx(15 / math.sqrt(2))
    text = (sweep / "final.md").read_text()
    assert "89.00 ± 1.41" in text and "62.50 ± 10.61" in text and "final_acc (%)" in text


def test_labels_colours_and_no_prefix_matching():
    from fedrun.report import style as figures

    assert figures.algo_colour("fedrun.algorithms.feddyn.FedDyn") == figures.algo_colour("feddyn") != figures.algo_colour("fedavg")
    assert figures.algo_family("fedavgm") == "fedavgm" and figures.algo_label("fedavgm") == "fedavgm"  # not FedAvg
    assert figures.algo_family("FedDynPaper") == figures.algo_family("feddyn_paper") == "feddynpaper"
    colours = [figures.algo_colour(a) for a in ["feddyn", "fedavg", "fedprox", "scaffold", "fedadam", "feddc", "fedspeed", "fedsmoo", "fednova"]]
    assert len(set(colours)) == len(colours)
    assert figures.partition_label("fedrun.data.partition.dirichlet", {"alpha": 0.3}) == "Dir(0.3)"
    assert figures.key_label("participation", 0.1) == "p=0.1"
    assert figures.setting_title({"data": "synthetic", "partition": "dirichlet", "partition.alpha": 0.3, "num_clients": 100,
                                  "participation": 0.1}) == "synthetic, dirichlet α=0.3, 100 clients, participation 0.1"


# --- settings are configs, paper tables, figures (issue 21) --------------------------------------


def write_config_run(path: Path, config: dict, accs: list[float], choices: dict | None = None, **columns: list[float]) -> Path:
    """A finished run directory with the given resolved config (JSON is YAML) and test accuracies."""
    path.mkdir(parents=True)
    (path / ".hydra").mkdir()
    (path / ".hydra" / "config.yaml").write_text(json.dumps(config))
    (path / ".hydra" / "hydra.yaml").write_text(json.dumps({"hydra": {"runtime": {"choices": choices or {}}}}))
    metrics(accs).assign(**columns).to_csv(path / "metrics.csv", index=False)
    (path / "summary.json").write_text(json.dumps({"status": "finished", "rounds_done": len(accs), "config": config}))
    return path


def cfg(algo: dict, seed: int, partition: dict | None = None, **top) -> dict:
    return {"algo": algo, "partition": partition or {"_target_": "fedrun.data.partition.natural"},
            "data": {"_target_": "fedrun.data.synthetic.make_synthetic"}, "seed": seed, "rounds": 6, **top}


FEDAVG = {"_target_": "fedrun.algorithms.fedavg.FedAvg"}
FEDDYN = "fedrun.algorithms.feddyn.FedDyn"


def test_two_of_three_seeds_reaching_the_target_give_2_of_3_and_the_mean_of_those_two(tmp_path: Path):
    """FedDyn reaches 0.5 in rounds 2 and 4 (seed 2 never, in 6 rounds): '3 ± 1.4 (2/3 seeds)', mean
    (2+4)/2 = 3, sample std sqrt(((2-3)^2 + (4-3)^2)/1) = 1.41. FedAvg reaches it in rounds 6, 6 and 6:
    speed-up 6/3 = 2. FedDyn reaches 0.8 in round 5 (seed 0 only); FedAvg never in 6 rounds: '> 6/5'."""
    dyn = {"_target_": FEDDYN, "alpha": 0.01}
    for s, accs in enumerate([[0.1, 0.5, 0.6, 0.7, 0.8, 0.9], [0.1, 0.2, 0.3, 0.6, 0.7, 0.7], [0.1] * 6]):
        write_config_run(tmp_path / f"dyn{s}", cfg(dyn, s), accs, {"algo": "feddyn"})
        write_config_run(tmp_path / f"avg{s}", cfg(FEDAVG, s), [0.1, 0.2, 0.3, 0.4, 0.45, 0.5], {"algo": "fedavg"})
    made = report.report([tmp_path], targets=[0.5, 0.8], figures=False)
    tt = made["target_table"].set_index(["method", "target_acc"])
    row = tt.loc[("FedDyn", 50.0)]
    assert (row["runs"], row["reached"], row["rounds"]) == (3, 2, 3.0) and row["rounds_std"] == pytest.approx(math.sqrt(2))
    assert row["speedup"] == pytest.approx(2.0)
    assert tt.loc[("FedDyn", 80.0), "speedup_above"] == pytest.approx(6 / 5)
    wide = made["paper_table"].set_index("target (%)")
    assert wide.loc["50", "FedDyn"] == "3 ± 1.4 (2/3 seeds) (2×)"
    assert wide.loc["50", "FedAvg"] == "6 ± 0 (1×)"
    assert wide.loc["80", "FedDyn"] == "5 (1/3 seeds) (>1.2×)" and wide.loc["80", "FedAvg"] == "not in 6"
    text = (tmp_path / "paper_table.md").read_text()
    assert "3 seeds per row" in text.splitlines()[2]  # the caption line: what every row shares


def test_two_merged_sweeps_keep_feddyn_alphas_apart(tmp_path: Path):
    """Sweep A ran FedDyn α=0.01 (the option feddyn) and FedAvg; sweep B FedDyn α=0.03 via algo.alpha=0.03
    and α=0.01 again via a preset-like option name: 3 settings, α=0.01 pooled over both sweeps."""
    write_config_run(tmp_path / "a" / "0", cfg({"_target_": FEDDYN, "alpha": 0.01}, 0), [0.2, 0.6], {"algo": "feddyn"})
    write_config_run(tmp_path / "a" / "1", cfg(FEDAVG, 0), [0.1, 0.3], {"algo": "fedavg"})
    write_config_run(tmp_path / "b" / "0", cfg({"_target_": FEDDYN, "alpha": 0.03}, 0), [0.3, 0.7], {"algo": "feddyn"})
    write_config_run(tmp_path / "b" / "1", cfg({"_target_": FEDDYN, "alpha": 0.01}, 1), [0.2, 0.8], {"algo": "feddyn_alpha0.01"})
    made = report.report([tmp_path / "a", tmp_path / "b"], out=tmp_path / "out", targets=[0.5], figures=True)
    final = made["final_table"]
    assert final["method"].tolist() == ["FedAvg", "FedDyn α=0.01", "FedDyn α=0.03"]  # FedAvg first, then α in numeric order
    assert final.set_index("method").loc["FedDyn α=0.01", "runs"] == 2
    assert final.set_index("method").loc["FedDyn α=0.01", "final_acc_mean"] == pytest.approx(70.0)
    assert list(made["paper_table"].columns) == ["target (%)", "FedAvg", "FedDyn α=0.01", "FedDyn α=0.03"]
    assert made["curves"] == 3


def test_a_partition_sweep_gives_one_row_per_setting_and_no_empty_rows(tmp_path: Path):
    """iid, Dir(0.3), Dir(0.6) and lognormal σ=0.3 at two participations: 8 settings, 8 rows, none empty."""
    parts = {"iid": {"_target_": "fedrun.data.partition.iid"}, "d3": {"_target_": "fedrun.data.partition.dirichlet", "alpha": 0.3},
             "d6": {"_target_": "fedrun.data.partition.dirichlet", "alpha": 0.6},
             "u": {"_target_": "fedrun.data.partition.unbalanced", "sigma": 0.3, "alpha": None}}
    for name, part in parts.items():
        for p in (0.1, 1.0):
            for algo, node in (("fedavg", FEDAVG), ("feddyn", {"_target_": FEDDYN, "alpha": 0.01})):
                write_config_run(tmp_path / f"{name}_{p}_{algo}", cfg(node, 0, part, participation=p), [0.2, 0.6], {"algo": algo})
    made = report.report([tmp_path], targets=[0.5], figures=False)
    wide = made["paper_table"]
    assert len(wide) == 8 and (wide != "").all().all()
    assert wide["setting"].tolist()[:4] == ["Dir(0.3), p=0.1", "Dir(0.3), p=1", "Dir(0.6), p=0.1", "Dir(0.6), p=1"]  # numeric order
    assert set(wide["setting"]) == {f"{lab}, p={p}" for lab in ("IID", "Dir(0.3)", "Dir(0.6)", "lognormal σ=0.3") for p in ("0.1", "1")}
    assert (wide["FedDyn"] == "2 (1×)").all()  # both reach 0.5 in round 2


def test_runs_are_ordered_by_number_not_by_text(tmp_path: Path):
    for s in (0, 1, 2, 10, 11):
        write_config_run(tmp_path / f"run{s}", cfg(FEDAVG, s, lr=[0.1, 0.05][s % 2]), [0.2, 0.6], {"algo": "fedavg"})
    table = report.report([tmp_path], figures=False)["table"]
    assert table["seed"].tolist() == [1, 11, 0, 2, 10]  # lr 0.05 before 0.1; seeds 0 < 2 < 10


def test_latex_table_parses_back_to_the_same_rows_and_columns(sweep: Path):
    made = report.report([sweep], figures=False)
    wide = made["paper_table"]
    tex = (sweep / "paper_table.tex").read_text()
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex and "\\caption{" in tex
    spec = re.search(r"\\begin\{tabular\}\{(\w+)\}", tex).group(1)
    body = tex.split("\\midrule")[1].split("\\bottomrule")[0].strip().splitlines()
    header = tex.split("\\toprule")[1].split("\\midrule")[0].strip()
    rows = [[c.strip() for c in line.rstrip("\\ ").split("&")] for line in body]
    assert len(spec) == wide.shape[1] and len(header.split("&")) == wide.shape[1]
    assert len(rows) == wide.shape[0] and all(len(r) == wide.shape[1] for r in rows)
    assert rows[0][2] == "2 $\\pm$ 0 (2.5$\\times$)"  # ± and × as math, the cell otherwise as in markdown
    final_tex = (sweep / "final.tex").read_text()
    assert final_tex.count("\\\\\n") == 1 + len(made["final_table"])  # header + one row per setting


def test_per_client_and_validation_metrics_in_the_report(tmp_path: Path):
    """client_acc_worst10 0.2 -> 0.4 and val_acc 0.5 -> 0.7 in metrics.csv: final 40% and 70%; --metric
    client_acc_worst10 counts rounds to its target (0.3: round 2)."""
    write_config_run(tmp_path / "a", cfg(FEDAVG, 0), [0.5, 0.6], {"algo": "fedavg"}, client_acc_worst10=[0.2, 0.4], val_acc=[0.5, 0.7])
    made = report.report([tmp_path], figures=False)
    final = made["final_table"].iloc[0]
    assert final["final_client_acc_worst10_mean"] == pytest.approx(40.0) and final["final_val_acc_mean"] == pytest.approx(70.0)
    assert "final_val_acc (%)" in (tmp_path / "final.md").read_text()
    made = report.report([tmp_path], metric="client_acc_worst10", targets=[0.3])
    assert made["table"].iloc[0]["rounds_to_30"] == 2 and made["table"].iloc[0]["final_acc"] == pytest.approx(40.0)
    assert report.report([tmp_path], metric="val_acc", figures=False)["table"].iloc[0]["best_acc"] == pytest.approx(70.0)


def test_every_shipped_algorithm_and_preset_gets_its_own_colour_linestyle_and_label(tmp_path: Path):
    """One run per option of conf/algo/ (resolved as Hydra composes it), in two partitions: every
    curve has a distinct (colour, linestyle) pair and a distinct label; a yaml's label/color win."""
    from omegaconf import OmegaConf

    from fedrun.cli.sentences import compose
    from fedrun.config.schema import option_names, register_configs
    from fedrun.report.figures import curves_of

    register_configs()
    options = option_names("algo")
    assert len(options) >= 17
    for name in options:
        node = OmegaConf.to_container(compose([f"algo={name}"]).algo, resolve=True)
        for part in ("iid", "natural"):
            write_config_run(tmp_path / f"{name}_{part}", cfg(node, 0, {"_target_": f"fedrun.data.partition.{part}"}), [0.2, 0.6], {"algo": name})
    table, runs, keys, _ = report.collect([tmp_path])
    curves = curves_of(runs, None, keys)
    assert len(curves) == 2 * len(options)
    assert len({(c.colour, str(c.linestyle)) for c in curves}) == len(curves)
    assert len({c.label for c in curves}) == len(curves)
    labels = {c.label for c in curves}
    assert {"FedDyn α=0.001, IID", "FedDyn α=0.01, IID", "FedDyn α=0.1, IID", "FedProx μ=0.01, natural"} <= labels
    dyn = sorted((c for c in curves if c.family == "feddyn" and c.problem == "IID"), key=lambda c: c.params)
    assert len({c.colour for c in dyn}) == 3  # three shades of FedDyn's colour, by α
    # a user's yaml: label and color
    node = {"_target_": "mine.FedAvgM", "momentum": 0.9, "label": "FedAvgM (ours)", "color": "#123456"}
    write_config_run(tmp_path / "mine", cfg(node, 0), [0.2, 0.6], {"algo": "fedavgm"})
    table, runs, keys, _ = report.collect([tmp_path / "mine", tmp_path / "fedavg_iid"])
    curves = {c.label: c for c in curves_of(runs, None, keys)}
    assert curves["FedAvgM (ours), natural"].colour == "#123456"
    assert curves["FedAvg, IID"].colour == "#0072B2" and curves["FedAvg, IID"].marker != curves["FedAvgM (ours), natural"].marker


def test_per_run_plot_tells_the_three_accuracies_apart_and_raw_spikes_do_not_set_the_loss_range(monkeypatch, tmp_path: Path):
    """Server, active-mean and all-mean accuracy: three colours; a train-loss spike of 50 (raw) stays
    out of the y range (the 10-evaluation moving average peaks at 0.5 + 49.5/10 < 6); per-client and
    validation accuracy are drawn when the rows have them."""
    from fedrun.observers import plot as plots
    from fedrun.report import style as figures

    saved = []
    monkeypatch.setattr(figures, "save", lambda fig, path, dpi=150: saved.append(fig) or [])
    rows = [{"round": r, "test_acc": 0.5, "test_acc_active": 0.5, "test_acc_all": 0.4, "test_loss": 1.0, "val_acc": 0.45,
             "client_acc_worst10": 0.3, "train_loss": 50.0 if r == 20 else 0.5} for r in range(1, 101)]
    plots.convergence_plot(rows, tmp_path / "c.png", "t", algo="FedDyn")
    ax_acc, ax_loss = saved[0].axes
    colours = {line.get_label(): line.get_color() for line in ax_acc.get_lines()}
    assert len({colours[k] for k in ("server model", "mean of active clients' models", "mean of all clients' models")}) == 3
    assert colours["server model"] == figures.algo_colour("FedDyn")
    assert {"validation accuracy (server model)", "per-client accuracy, worst 10%"} <= set(colours)
    assert ax_loss.get_ylim()[1] < 10


def test_a_fixed_data_seed_is_part_of_the_setting_and_seed_is_not(tmp_path: Path):
    """seed=0,1 at data_seed=0 and at data_seed=1: two settings (data_seed 0 and 1) of two runs each,
    the mean over training seeds: (0.9 + 0.7) / 2 = 80.00 and (0.6 + 0.8) / 2 = 70.00."""
    finals = {(0, 0): 0.9, (0, 1): 0.7, (1, 0): 0.6, (1, 1): 0.8}
    for (data_seed, seed), acc in finals.items():
        run = write_run(tmp_path / "sweep" / f"d{data_seed}_s{seed}", "feddyn", seed, [0.1, acc])
        for name in (".hydra/config.yaml", "summary.json"):
            doc = json.loads((run / name).read_text())
            (doc["config"] if name == "summary.json" else doc)["data_seed"] = data_seed
            (run / name).write_text(json.dumps(doc))
    final = report.report([tmp_path / "sweep"], figures=False)["final_table"].set_index("data_seed")
    assert final["runs"].tolist() == [2, 2]
    assert final["final_acc_mean"].tolist() == pytest.approx([80.0, 70.0])
