"""Deterministic execution: ``deterministic=true`` makes GPU runs repeat bit for bit.

On CPU fedrun is deterministic already (every random draw comes from :mod:`fedrun.seeding`, and
the CPU kernels it uses are deterministic for a fixed thread count). On GPU some kernels (atomic
adds in scatter/index_add, cuBLAS split-K reductions, cuDNN autotuning) are not; with
``deterministic=true`` this module sets ``torch.use_deterministic_algorithms(True)``, turns cuDNN
benchmarking off and cuDNN's deterministic mode on, and sets ``CUBLAS_WORKSPACE_CONFIG=:4096:8``
(required by cuBLAS for reproducible GEMMs, and read when cuBLAS first initialises, so this runs
before the model and data are moved to the GPU). The price is some speed.
"""

from __future__ import annotations

import os

import torch
from omegaconf import DictConfig


def configure_determinism(cfg: DictConfig) -> bool:
    """Apply ``cfg.deterministic``; returns whether deterministic mode is on."""
    on = bool(cfg.get("deterministic", False))
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    return on
