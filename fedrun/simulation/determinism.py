"""Numerics of a run: deterministic kernels (``deterministic``) and float32 precision (``precision``).

Determinism. On CPU fedrun is deterministic already (every random draw comes from
:mod:`fedrun.seeding`, and the CPU kernels it uses are deterministic for a fixed thread count). On GPU
some kernels (atomic adds in scatter/index_add, cuBLAS split-K reductions, cuDNN autotuning) are not;
with ``deterministic=true`` this module sets ``torch.use_deterministic_algorithms(True)``, turns cuDNN
benchmarking off and cuDNN's deterministic mode on, and sets ``CUBLAS_WORKSPACE_CONFIG=:4096:8``
(required by cuBLAS for reproducible GEMMs, and read when cuBLAS first initialises, so this runs
before the model and data are moved to the GPU). The price is some speed.

Precision. PyTorch's own default on Ampere and newer GPUs runs float32 *convolutions* (and cuDNN
RNNs) in TF32, a 10-bit-mantissa format, while float32 matmuls stay IEEE. Curves that researchers
compare must not depend on which kernel a layer happens to use, so ``precision=fp32`` (the default)
makes matmuls, convolutions and RNNs all IEEE float32; ``precision=tf32`` allows TF32 in all three
(faster on tensor cores, relative error around 1e-3 per operation; no effect on CPU).
``precision=bf16`` keeps these flags IEEE and instead runs local training's model forward (and
so its backward) under bfloat16 autocast, on CPU and GPU alike (:class:`fedrun.engines.base.LocalTraining`):
parameters, the algorithm's terms and the update stay float32, and evaluation is float32.
"""

from __future__ import annotations

import os

import torch

from fedrun.config.specs import Numerics

PRECISIONS = ("fp32", "tf32", "bf16")


def configure_determinism(numerics: Numerics) -> bool:
    """Apply ``deterministic`` and ``precision``; returns whether deterministic mode is on."""
    configure_precision(numerics.precision)
    on = numerics.deterministic
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    return on


def configure_precision(precision: str) -> None:
    """Set the float32 precision of CUDA matmuls, cuDNN convolutions and cuDNN RNNs together."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}")
    if _has_fp32_precision_api():  # torch >= 2.9: the legacy allow_tf32 flags must not be mixed in
        value = "tf32" if precision == "tf32" else "ieee"
        torch.backends.cuda.matmul.fp32_precision = value
        torch.backends.cudnn.conv.fp32_precision = value
        torch.backends.cudnn.rnn.fp32_precision = value
    else:
        allow = precision == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = allow
        torch.backends.cudnn.allow_tf32 = allow


def current_precision() -> dict[str, bool]:
    """Whether TF32 is allowed for CUDA matmuls, cuDNN convolutions and cuDNN RNNs right now."""
    if _has_fp32_precision_api():
        return {
            "matmul": torch.backends.cuda.matmul.fp32_precision == "tf32",
            "conv": torch.backends.cudnn.conv.fp32_precision == "tf32",
            "rnn": torch.backends.cudnn.rnn.fp32_precision == "tf32",
        }
    conv = bool(torch.backends.cudnn.allow_tf32)
    return {"matmul": bool(torch.backends.cuda.matmul.allow_tf32), "conv": conv, "rnn": conv}


def _has_fp32_precision_api() -> bool:
    cudnn = torch.backends.cudnn
    return hasattr(getattr(cudnn, "conv", None), "fp32_precision") and hasattr(torch.backends.cuda.matmul, "fp32_precision")
