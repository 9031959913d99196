"""``precision``: fp32 (default) makes CUDA matmuls, cuDNN convolutions and RNNs all exact IEEE float32.

PyTorch's own default lets cuDNN run float32 convolutions in TF32 on Ampere and newer GPUs, so a run
that left the flags alone would train the CIFAR CNN in TF32 while the MLPs stay exact. The flags are
process-global, so they are read in one fresh interpreter (CPU-only machines can set and read them).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SCRIPT = """
import json
from fedrun.determinism import configure_determinism, current_precision
from fedrun.specs import Numerics
flags = {"before": current_precision()}
for precision in ("fp32", "tf32", "bf16"):  # each sets all three flags
    configure_determinism(Numerics(False, precision))
    flags[precision] = current_precision()
print(json.dumps(flags))
"""


def test_precision_sets_matmul_conv_and_rnn_flags_together() -> None:
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    flags = json.loads(proc.stdout.strip().splitlines()[-1])
    assert flags["before"]["conv"] is True  # torch's default: this is what fp32 must undo
    assert flags["fp32"] == {"matmul": False, "conv": False, "rnn": False}
    assert flags["tf32"] == {"matmul": True, "conv": True, "rnn": True}
    assert flags["bf16"] == {"matmul": False, "conv": False, "rnn": False}  # exact outside autocast


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


def test_configure_precision_rejects_unknown_value() -> None:
    from fedrun.determinism import configure_precision

    with pytest.raises(ValueError):
        configure_precision("fp16")
