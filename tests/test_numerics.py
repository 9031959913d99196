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
from omegaconf import OmegaConf
from fedrun.determinism import configure_determinism, current_precision
before = current_precision()
configure_determinism(OmegaConf.create({"precision": sys.argv[1], "deterministic": False}))
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


def test_unknown_precision_is_one_sentence() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fedrun", "precision=bf16", "rounds=1"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["fedrun: error: precision=bf16 is not valid: use one of fp32, tf32."]


def test_configure_precision_rejects_unknown_value() -> None:
    from fedrun.determinism import configure_precision

    with pytest.raises(ValueError):
        configure_precision("fp16")
