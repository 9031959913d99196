"""Sharpness-aware local steps (Foret et al., "Sharpness-Aware Minimization", ICLR 2021, Eq. 2-3).

One SAM step at w for each active client (rows of stacked [A, P] tensors):

    g = ∇L(w);   e = ρ · g / (‖g‖ + ε);   step gradient = ∇L(w + e)

The engine then clips it, adds weight decay and moves w (not w + e) by lr. :func:`ascent` and
:func:`sam_gradient` are the pieces methods build their :class:`~fedrun.algorithms.base.LocalHook`
from (FedSpeed's and FedSMOO's perturbations change ``g`` before the ascent); :class:`SAM` is the plain
hook. ``extra`` chooses whether ∇L includes the algorithm's extra terms (the objective's linear and
proximal parts) or only the cross-entropy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from fedrun.algorithms.base import GradFn, LocalHook, LocalObjective

EPS = 1e-7  # FL-Simulator's ESAM/DRegSAM: rho / (||g|| + 1e-7)


def ascent(grad: torch.Tensor, rho: float) -> torch.Tensor:
    """e = ρ · g / (‖g‖ + ε), row by row of ``grad`` [A, P]."""
    return grad * (rho / (torch.linalg.vector_norm(grad, dim=-1, keepdim=True) + EPS))


def sam_gradient(grad_fn: GradFn, w: torch.Tensor, rho: float, extra: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(cross-entropy at w [A], ∇L(w + e) [A, P]) with e = :func:`ascent` (∇L(w), ρ)."""
    loss, grad = grad_fn(w, extra)
    _, perturbed = grad_fn(w + ascent(grad, rho), extra)
    return loss, perturbed


@dataclass(frozen=True)
class SAM(LocalHook):
    rho: float
    extra: bool = True

    def gradient(
        self, grad_fn: GradFn, w: torch.Tensor, objective: LocalObjective, active: Optional[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return sam_gradient(grad_fn, w, self.rho, self.extra)
