"""The end-of-run summary line and a sweep's per-job lines (fedrun/observers/progress.py)."""

from __future__ import annotations

import pytest

from fedrun.observers.progress import count_jobs, duration, job_line, slow_run_warning, summary_line, sweep_table


def test_summary_line_says_status_final_best_rounds_time_and_dir():
    summary = {"status": "finished", "final_test_acc": 0.8412, "best_test_acc": 0.85, "best_round": 17,
               "rounds_done": 20, "seconds": 125.0}
    assert summary_line(summary, "outputs/runs/x", 20) == (
        "fedrun: finished: test_acc 84.12% (best 85.00% at round 17), 20/20 rounds, 2 min -> outputs/runs/x")
    stopped = {"status": "failed", "final_test_acc": None, "best_test_acc": None, "rounds_done": 0, "seconds": 3.0}
    assert summary_line(stopped, "d", 5) == "fedrun: failed: test_acc -, 0/5 rounds, 3.0 s -> d"


@pytest.mark.parametrize("seconds,text", [(4.25, "4.2 s"), (42, "42 s"), (89, "89 s"), (150, "2 min"), (3900, "1 h 05 min")])
def test_duration(seconds, text):
    assert duration(seconds) == text


def test_job_line_eta_is_mean_time_per_job_times_jobs_left():
    """Started at t=0, 2 of 5 jobs done at t=60: 30 s a job, 3 left -> 90 s = '2 min' (1.5 min rounded)."""
    records = [{"kind": "start", "time": 0.0, "total": 5},
               {"kind": "job", "num": 0, "status": "finished", "final_test_acc": 0.5},
               {"kind": "job", "num": 1, "status": "diverged", "final_test_acc": 0.841}]
    assert job_line(records, 60.0) == "job 2/5 diverged, 84.10%, ETA 2 min"
    unknown = [{"kind": "start", "time": 0.0, "total": None}, records[1]]
    assert job_line(unknown, 60.0) == "job 1/? finished, 50.00%"  # a search with no known size: no ETA


def test_count_jobs_is_the_product_of_the_sweeps():
    assert count_jobs(["seed=0,1,2", "lr=0.1,0.05", "algo=fedavg"]) == 6
    assert count_jobs(["seed=range(0,4)", "algo=fedavg,feddyn,scaffold"]) == 12
    assert count_jobs(["algo=fedavg"]) == 1
    assert count_jobs(["lr=interval(0.01,0.5)"]) is None  # only a search sweeper samples an interval


def test_sweep_table_shows_only_the_keys_that_vary_in_job_order():
    jobs = [{"kind": "job", "num": n, "overrides": ["algo=fedavg", f"seed={n % 2}", "lr=0.1"], "status": "finished",
             "final_test_acc": 0.1 * n, "best_test_acc": 0.1 * n, "rounds_done": 2, "seconds": 1.0} for n in (1, 0)]
    lines = sweep_table(jobs).splitlines()
    assert lines[0].split() == ["job", "seed", "status", "final", "best", "rounds", "time"]
    assert [line.split()[:2] for line in lines[1:]] == [["0", "0"], ["1", "1"]]


def test_slow_run_warning_only_for_a_long_first_round_on_the_cpu():
    """150 s a round with 299 left: 44,850 s = 12 h 27 min (12 * 3600 = 43,200; 1,650 s = 27.5 min, floored)."""
    text = slow_run_warning(150.0, 299, "cpu")
    assert text.startswith("fedrun: the first round took 2 min on the CPU, so the 299 rounds left need about 12 h 27 min")
    assert "device=cuda" in text
    assert slow_run_warning(150.0, 299, "cuda") is None  # a GPU run is what the warning recommends
    assert slow_run_warning(4.9, 10_000, "cpu") is None  # short rounds: no warning however many
    assert slow_run_warning(30.0, 19, "cpu") is None  # 570 s left: under 10 minutes


def test_a_slow_first_round_is_said_once(tmp_path, monkeypatch, caplog):
    import logging

    import fedrun
    from fedrun.observers import progress

    monkeypatch.setattr(progress, "SLOW_ROUND_S", 0.0)
    monkeypatch.setattr(progress, "SLOW_RUN_S", 0.0)
    with caplog.at_level(logging.INFO, logger="fedrun"):
        fedrun.run(["algo=fedavg", "num_clients=4", "rounds=3", "local_epochs=1", "progress=false", "device=cpu"], run_dir=tmp_path / "r")
    said = [r.getMessage() for r in caplog.records if "the first round took" in r.getMessage()]
    assert len(said) == 1 and "the 2 rounds left" in said[0]
    assert caplog.records[-1].getMessage().startswith("fedrun: finished: test_acc")  # the summary line comes last
