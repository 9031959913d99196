"""scripts/bench.py end to end on a tiny setting: JSON keys the README and CI read, sane numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_bench_writes_both_engine_timings(tmp_path) -> None:
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable, str(ROOT / "scripts" / "bench.py"), "num_clients=6", "participation=0.5", "sampling=fixed",
        "data.mean_samples=20", "local_epochs=1", "bench.warmup=1", "bench.rounds=1", "bench.repeats=2",
        "bench.threads=1", f"out={out}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    for engine in ("sequential", "vectorized"):
        r = result["engines"][engine]
        assert 0 < r["s_per_round"] <= r["s_per_round_median"]
        assert r["active_clients_per_round"] == 3
        assert r["client_samples_per_s"] > 0 and r["peak_memory_bytes"] > 0
        assert r["tflop_per_s"] == pytest.approx(r["train_flops_per_sample"] * r["client_samples_per_s"] / 1e12)
    assert result["speedup"] == pytest.approx(
        result["engines"]["sequential"]["s_per_round"] / result["engines"]["vectorized"]["s_per_round"]
    )
    assert result["ceiling"]["batch_size"] == 3 * 10  # expected active clients x B
    assert "| vectorized |" in proc.stdout


def load_bench():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench", ROOT / "scripts" / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_bench_rejects_unknown_bench_option() -> None:
    with pytest.raises(SystemExit) as exc:
        load_bench().parse(["bench.nope=1"])
    assert "unknown option bench.nope" in str(exc.value.code)


def test_train_flops_per_sample_of_a_linear_model_by_hand() -> None:
    """logreg d -> C: forward x·W^T is 2·d·C FLOPs a sample, the weight gradient another 2·d·C (x needs none)."""
    bench = load_bench()
    from conftest import compose_config
    from conftest import build

    exp = build(compose_config("num_clients=4", "data.mean_samples=20", "progress=false"))
    d, c = exp.data.x_train.shape[1], exp.data.num_classes
    assert bench.train_flops_per_sample(exp, 10) == 4 * d * c
