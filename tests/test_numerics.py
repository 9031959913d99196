"""``precision``: fp32 (default) makes CUDA matmuls, cuDNN convolutions and RNNs all exact IEEE float32.

PyTorch's own default lets cuDNN run float32 convolutions in TF32 on Ampere and newer GPUs, so a run
that left the flags alone would train the CIFAR CNN in TF32 while the MLPs stay exact (CPU-only
machines can set and read the flags).
"""

from __future__ import annotations

import pytest
import torch


def set_flags(matmul: bool, conv: bool, rnn: bool) -> None:
    """TF32 allowed or not, per kind of kernel, through whichever API this torch has."""
    from fedrun.simulation.determinism import _has_fp32_precision_api

    if _has_fp32_precision_api():
        torch.backends.cuda.matmul.fp32_precision = "tf32" if matmul else "ieee"
        torch.backends.cudnn.conv.fp32_precision = "tf32" if conv else "ieee"
        torch.backends.cudnn.rnn.fp32_precision = "tf32" if rnn else "ieee"
    else:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = conv


def test_precision_sets_matmul_conv_and_rnn_flags_together() -> None:
    """Starting from torch's default on Ampere+ (TF32 convolutions, IEEE matmuls), each precision sets
    all three flags; the flags are process-global, so they are put back afterwards."""
    from fedrun.simulation.determinism import configure_determinism, current_precision
    from fedrun.config.specs import Numerics

    before = current_precision()
    try:
        set_flags(matmul=False, conv=True, rnn=True)  # the mixed default that fp32 must undo
        assert current_precision() == {"matmul": False, "conv": True, "rnn": True}
        for precision, tf32 in (("fp32", False), ("tf32", True), ("bf16", False)):  # bf16: exact outside autocast
            configure_determinism(Numerics(False, precision))
            assert current_precision() == {"matmul": tf32, "conv": tf32, "rnn": tf32}, precision
    finally:
        set_flags(**before)


# ---------------------------------------------------------------- precision=bf16: mixed-precision local training

def _one_round(engine: str, precision: str, model: str = "mlp"):
    from conftest import compose_config
    from conftest import build
    from fedrun.simulation.round import run_round

    exp = build(compose_config(
        "num_clients=4", "participation=1.0", "sampling=fixed", "data.mean_samples=24", "local_epochs=2",
        "batch_size=8", "lr=0.05", f"model={model}", f"engine={engine}", f"precision={precision}", "progress=false",
    ))
    step = run_round(exp, 1)
    return step.client_thetas, exp.theta.dtype


@pytest.mark.parametrize("model", [pytest.param("mlp", marks=pytest.mark.slow), "logreg"])  # mlp: 4 s, with the slow tests
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
    from fedrun.simulation.determinism import configure_precision

    with pytest.raises(ValueError):
        configure_precision("fp16")
