"""``precision``: fp32 (default) makes CUDA matmuls, cuDNN convolutions and RNNs all exact IEEE float32.

PyTorch's own default lets cuDNN run float32 convolutions in TF32 on Ampere and newer GPUs, so a run
that left the flags alone would train the CIFAR CNN in TF32 while the MLPs stay exact. The flags are
process-global, so each case runs in a fresh interpreter (CPU-only machines can set and read them).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SCRIPT = """
import json, sys
from fedrun.determinism import configure_determinism, current_precision
from fedrun.specs import Numerics
before = current_precision()
configure_determinism(Numerics(False, sys.argv[1]))
print(json.dumps({"before": before, "after": current_precision()}))
"""


def _flags(precision: str) -> dict[str, dict[str, bool]]:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, precision], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_fp32_turns_off_torchs_default_tf32_convolutions() -> None:
    flags = _flags("fp32")
    assert flags["before"]["conv"] is True  # torch's default: this is what fp32 must undo
    assert flags["after"] == {"matmul": False, "conv": False, "rnn": False}


def test_tf32_allows_tf32_everywhere() -> None:
    assert _flags("tf32")["after"] == {"matmul": True, "conv": True, "rnn": True}


def test_bf16_keeps_float32_kernels_exact_outside_autocast() -> None:
    assert _flags("bf16")["after"] == {"matmul": False, "conv": False, "rnn": False}


# ---------------------------------------------------------------- precision=bf16: mixed-precision local training

def _one_round(engine: str, precision: str, model: str = "mlp"):
    from conftest import compose_config
    from fedrun.runner import build, run_round

    exp = build(compose_config(
        "num_clients=4", "participation=1.0", "sampling=fixed", "data.mean_samples=24", "local_epochs=2",
        "batch_size=8", "lr=0.05", f"model={model}", f"engine={engine}", f"precision={precision}", "progress=false",
    ))
    step = run_round(exp, 1)
    return step.client_thetas, exp.theta.dtype


@pytest.mark.parametrize("model", ["mlp", "logreg"])
def test_bf16_changes_the_numbers_a_little_and_both_engines_agree(model: str) -> None:
    import torch

    exact, _ = _one_round("sequential", "fp32", model)
    seq, dtype = _one_round("sequential", "bf16", model)
    vec, _ = _one_round("vectorized", "bf16", model)
    assert dtype == torch.float32 and seq.dtype == torch.float32  # parameters stay float32
    assert torch.isfinite(seq).all() and not torch.equal(seq, exact)  # autocast really ran
    assert torch.equal(_one_round("sequential", "fp32", model)[0], exact)  # fp32 repeats: the bf16 change is not noise
    assert (seq - exact).abs().max() < 0.03 * exact.abs().max()  # bfloat16 rounding (~1%), not a different method
    torch.testing.assert_close(vec, seq, rtol=0.0, atol=0.005)  # the engines round differently (~1e-3), within bf16


def test_unknown_precision_is_one_sentence() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fedrun", "precision=fp16", "rounds=1"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["fedrun: error: precision=fp16 is not valid: use one of fp32, tf32, bf16."]


def test_configure_precision_rejects_unknown_value() -> None:
    from fedrun.determinism import configure_precision

    with pytest.raises(ValueError):
        configure_precision("fp16")
