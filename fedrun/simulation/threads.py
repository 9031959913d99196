"""``threads=``: torch's intra-op threads for a run, chosen from the arithmetic of one local step.

``threads=null`` (the default) on a CPU counts the FLOPs of one local SGD step as the engine runs it
(:func:`step_flops`: forward and backward of one sample, counted by torch's ``FlopCounterMode`` on a
single sample and at least 6 FLOPs per parameter, times the batch size, times the clients a step
trains together: the expected active clients for the vectorised engine, 1 for the sequential one)
and uses one thread below :data:`PARALLEL_STEP_FLOPS`, torch's default (all cores) from there on.
Small steps are too small to split and extra threads only wait on each other; large ones are
dense matmuls that threads share. The threshold sits between the two settings measured side by side
on the idle 2-core dev machine (torch 2.14.1): the synthetic default (155 parameters, B=10, 2
clients: 1.9e4 FLOPs a step), which gains nothing from two threads and loses badly to them under
load, and the MNIST-shaped MLP 784-200-200-10 with 10 clients, E=5, B=50 (6.0e8 FLOPs a vectorised
step): 0.556 s a round with one thread, 0.294 s with two (1.9x). On a GPU torch's own choice stays.

``threads=N`` sets N. The choice, with the FLOPs it was made from, is logged and kept in
``summary.json`` (``threads_choice``). The rule reads the config only, never a timing, so a run's
thread count (and so its numbers) does not depend on the machine's load. Where it picks all cores
(the MNIST-shaped step) the vectorised engine's numbers are the same bit for bit with 1 and 2 threads
(tests/test_threads.py); small steps are not (one float32 ulp after a round), and always get one
thread. The previous count comes back when the run ends, so runs from Python
(:func:`fedrun.run`) leave the process as they found it.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from fedrun.errors import FedrunError

PARALLEL_STEP_FLOPS = 1e7  # FLOPs of one local step from which torch's threads pay off on a CPU


def flops_per_sample(model: Any, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    """Forward + backward FLOPs of one training sample: torch's FLOP counter on one sample (ops it
    cannot count, as a fused LSTM, count 0), and at least 6 per parameter (2 forward, 4 backward)."""
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    w = theta.detach().clone().requires_grad_(True)
    try:
        with FlopCounterMode(display=False) as counter:
            torch.autograd.grad(F.cross_entropy(model(w, x[:1]), y[:1]), w)
        counted = float(counter.get_total_flops())
    except Exception:  # noqa: BLE001 - a model the counter cannot trace (or a loss on other targets): the floor
        counted = 0.0
    return max(counted, 6.0 * theta.numel())


def clients_per_step(exp: Any) -> int:
    """How many clients one local step trains at once: the expected active clients for the
    vectorised engine (at most its ``chunk_size`` when set), one for the others."""
    if type(exp.engine).__name__ != "VectorizedEngine":
        return 1
    active = max(1, round(exp.spec.sampling.participation * exp.ctx.num_clients))
    chunk = int(getattr(exp.engine, "chunk_size", 0) or 0)
    return min(active, chunk) if chunk else active


def step_flops(exp: Any) -> float:
    """FLOPs of one local step of ``exp`` as its engine runs it."""
    per_sample = flops_per_sample(exp.model, exp.theta, exp.data.x_train, exp.data.y_train)
    return per_sample * exp.spec.local.batch_size * clients_per_step(exp)


def choose_threads(setting: Optional[int], flops: float, device: torch.device) -> Optional[int]:
    """The thread count to set, or None to keep torch's."""
    if setting is not None:
        if int(setting) < 1:
            raise FedrunError(f"threads={setting} is impossible: use threads=N with N >= 1, or threads=null to choose by the work of a local step.")
        return int(setting)
    if device.type == "cpu" and flops < PARALLEL_STEP_FLOPS:
        return 1
    return None


def apply_threads(setting: Optional[int], exp: Any) -> tuple[int, dict[str, Any]]:
    """Set the run's thread count; returns the count before (for the run to put back when it ends)
    and what the choice was made from (``summary.json``'s ``threads_choice``)."""
    before = torch.get_num_threads()
    flops = step_flops(exp) if setting is None and exp.device.type == "cpu" else None
    chosen = choose_threads(setting, flops or 0.0, exp.device)
    if chosen is not None:
        torch.set_num_threads(chosen)
    if setting is not None:
        rule = "threads=N"
    elif exp.device.type != "cpu":
        rule = "GPU: torch's default"
    else:
        rule = f"{flops:.3g} FLOPs per local step {'<' if chosen == 1 else '>='} {PARALLEL_STEP_FLOPS:.0e}"
    return before, {"threads": torch.get_num_threads(), "flops_per_step": flops, "rule": rule}
