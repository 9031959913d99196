"""fedrun-report on hand-written run directories: rounds to target, statuses, speed-up, figures."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from fedrun.report import cli as report
from fedrun.report.runs import comm_to_target, find_runs, rounds_to_target
from fedrun.report.tables import paper_table

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
    assert list(table.columns[:3]) == ["algo", "algo.alpha", "seed"]  # only the varying keys, seed last
    assert "lr" not in table.columns and "data" not in table.columns
    by = table.set_index(["algo", "seed"])
    assert by.loc[("fedavg", 0), "rounds_to_50"] == 4
    assert by.loc[("fedavg", 1), "rounds_to_50"] == 6
    assert math.isnan(by.loc[("fedavg", 1), "rounds_to_80"])
    assert by.loc[("feddyn", 1), "rounds_to_80"] == 4
    assert by.loc[("feddyn", 0), "final_acc"] == pytest.approx(90.0) and by.loc[("fedavg", 1), "best_acc"] == pytest.approx(55.0)  # percent
    assert (table["status"] == "finished").all()
    assert made["targets"] == [0.5, 0.8]  # taken from the runs' `targets` config
    for name in ["runs.md", "final.csv", "final.md", "targets.csv", "targets.md", "convergence.png", "convergence.pdf", "convergence.svg"]:
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
    assert math.isnan(tt.loc[("feddyn", 80.0), "speedup"])  # FedAvg never got there: no number invented


def test_communication_counts_scaffold_double(tmp_path: Path):
    write_run(tmp_path / "a", "fedavg", 0, [0.2, 0.6])
    write_run(tmp_path / "b", "scaffold", 0, [0.6, 0.7], comm_per_round=2.0)
    tt = report.report([tmp_path], targets=[0.6], figures=False)["target_table"].set_index("algo")
    assert tt.loc["scaffold", "rounds"] == 1 and tt.loc["scaffold", "comm_fedavg_rounds"] == 2
    assert tt.loc["scaffold", "speedup"] == pytest.approx(1.0)  # half the rounds, same communication


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
    wide = paper_table(tt).set_index("target_acc")
    assert wide.loc[50.0, "feddyn"] == "2 (2.5x) [published 67]"  # FedDyn: rounds 2 and 2; FedAvg: 4 and 6
    assert wide.loc[50.0, "fedavg"] == "5 (1x) [published 754]"
    assert wide.loc[80.0, "fedavg"] == "not in 6 rounds"
    header = next(line for line in (tmp_path / "out" / "paper_table.md").read_text().splitlines() if line.startswith("|"))
    assert [c.strip() for c in header.strip("|").split("|")] == ["target_acc (%)", "fedavg", "feddyn"]


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


def test_facet_writes_one_figure_per_value(sweep: Path):
    made = report.report([sweep], group_by=["algo"], facet=["seed"])
    assert {"convergence_seed=0.png", "convergence_seed=1.png"} <= set(made["files"])
    assert all((sweep / f).stat().st_size > 0 for f in made["files"])


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


def test_labels_colours_and_presets():
    from fedrun.report import style as figures
    from fedrun.report.figures import curve_label

    assert curve_label(["algo", "algo.alpha"], ["feddyn_alpha0.1", 0.1]) == "FedDyn α=0.1"
    assert curve_label(["algo", "partition"], ["fedavg", "iid"]) == "FedAvg, partition=iid"
    assert figures.algo_colour("feddyn_alpha0.1") == figures.algo_colour("FedDynPaper") == figures.algo_colour("feddyn") != figures.algo_colour("fedavg")
    colours = [figures.algo_colour(a) for a in ["feddyn", "fedavg", "fedprox", "scaffold", "fedadam", "feddc", "fedspeed", "fedsmoo", "fednova"]]
    assert len(set(colours)) == len(colours)
    assert figures.setting_title({"data": "synthetic", "partition": "dirichlet", "partition.alpha": 0.3, "num_clients": 100,
                                  "participation": 0.1}) == "synthetic, dirichlet α=0.3, 100 clients, participation 0.1"
