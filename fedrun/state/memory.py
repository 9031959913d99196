"""Memory estimates made before anything large is allocated, and the decisions taken from them.

Three consumers share these numbers: the state store's automatic placement (device, pinned host
memory or a memory-mapped file, :func:`choose_placement`), the vectorised engine's automatic chunk
size (:func:`auto_chunk_size`), and the up-front check that turns a certain out-of-memory crash into
one :class:`~fedrun.errors.FedrunError` sentence naming the setting that would fit
(:func:`check_state_fits`, :func:`check_chunk_fits`, :func:`check_data_fits`).

The estimates are deliberately rough (within a factor of about two) and err on the large side:
data = the bytes of its tensors; client state = ``4 · clients · params · tables``; local training of
one client = its parameters, gradient and update temporaries (:data:`PARAM_COPIES` vectors) plus the
activations of a batch (outputs of every leaf module, kept for backward and mirrored by their
gradients: :data:`ACTIVATION_COPIES`).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from fedrun.errors import FedrunError

BYTES = 4  # float32
PARAM_COPIES = 6  # w, grad, clipped grad, new w, algorithm rows (linear, anchor) per client
ACTIVATION_COPIES = 3  # forward outputs, saved tensors, their gradients
USABLE = 0.8  # fraction of free memory we plan to use
PLACEMENTS = ("auto", "device", "pinned", "mmap")

GiB = 1024**3


def gib(n: float) -> str:
    return f"{n / GiB:.1f} GiB"


def tensor_bytes(*tensors: Optional[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def data_bytes(data) -> int:
    """Bytes of a :class:`~fedrun.data.FederatedData`'s tensors."""
    return tensor_bytes(data.x_train, data.y_train, data.x_test, data.y_test, data.groups)


def state_bytes(num_clients: int, num_params: int, num_tables: int) -> int:
    """Bytes of ``num_tables`` float32 ``[num_clients, num_params]`` client-state tables."""
    return BYTES * num_clients * num_params * num_tables


def activation_bytes_per_sample(module: nn.Module, sample: torch.Tensor) -> int:
    """Bytes of the outputs of every leaf module for one input ``sample`` (shape [1, ...]), no grad."""
    total = 0

    def count(o) -> int:
        if isinstance(o, torch.Tensor):
            return o.numel() * max(o.element_size(), BYTES)
        if isinstance(o, (tuple, list)):  # e.g. an LSTM's (out, (h, c))
            return sum(count(t) for t in o)
        return 0

    def hook(_mod, _inp, out) -> None:
        nonlocal total
        total += count(out)

    handles = [m.register_forward_hook(hook) for m in module.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            module(sample)
    finally:
        for h in handles:
            h.remove()
    return total + count(sample)


def client_training_bytes(num_params: int, batch_size: int, act_per_sample: int) -> int:
    """Working memory of local training of one client (parameters, temporaries, activations)."""
    return PARAM_COPIES * BYTES * num_params + ACTIVATION_COPIES * batch_size * act_per_sample


def free_bytes(device: torch.device) -> int:
    """Free memory of ``device`` now: CUDA's free memory, or the host's available memory."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return host_available_bytes()


def host_available_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def disk_free_bytes(directory: Path) -> int:
    path = Path(directory)
    while not path.exists() and path != path.parent:
        path = path.parent
    return int(shutil.disk_usage(path).free)


@dataclass(frozen=True)
class Budget:
    """Free bytes on the compute device, in host memory and on disk (for mmap), before allocation."""

    device: int
    host: int
    disk: int
    device_is_host: bool


def current_budget(device: torch.device, directory: Path) -> Budget:
    device = torch.device(device)
    host = host_available_bytes()
    dev = free_bytes(device) if device.type == "cuda" else host
    return Budget(dev, host, disk_free_bytes(directory), device.type != "cuda")


def choose_placement(
    requested: str,
    state: int,
    training: int,
    budget: Budget,
    device_name: str = "device",
) -> str:
    """The client-state placement: ``requested``, or for ``auto`` the fastest that fits.

    ``state`` = bytes of all client-state tables, ``training`` = bytes the data and local training
    need on the compute device besides them. Raises :class:`FedrunError` (one sentence naming
    ``state_placement``) when the requested placement cannot hold the tables.
    """
    if requested not in PLACEMENTS:
        raise FedrunError(f"state_placement={requested} is unknown: use one of {', '.join(PLACEMENTS)}.")
    if state == 0:
        return "device" if requested == "auto" else requested
    device_room = USABLE * budget.device - training
    host_room = USABLE * budget.host - (training if budget.device_is_host else 0)
    fits = {
        "device": state <= device_room,
        "pinned": state <= host_room,
        "mmap": state <= budget.disk,
    }
    if requested == "auto":
        order = ("device", "mmap") if budget.device_is_host else ("device", "pinned", "mmap")
        for placement in order:
            if fits[placement]:
                return placement
        raise FedrunError(
            f"the client state needs {gib(state)} but neither the {device_name} ({gib(max(device_room, 0))} free), "
            f"host memory nor the disk ({gib(budget.disk)} free) can hold it: lower num_clients or free disk space."
        )
    if not fits[requested]:
        room = {"device": device_room, "pinned": host_room, "mmap": budget.disk}[requested]
        better = [p for p in ("device", "pinned", "mmap") if fits[p] and not (p == "pinned" and budget.device_is_host)]
        hint = f"use state_placement={better[0]} (or auto)" if better else "lower num_clients"
        raise FedrunError(
            f"state_placement={requested} needs {gib(state)} for the client state but only {gib(max(room, 0))} "
            f"is available there: {hint}."
        )
    return requested


def auto_chunk_size(active: int, per_client: int, free: int) -> int:
    """How many clients to train at once: all ``active`` if they fit in ``free`` bytes, else fewer."""
    return max(1, min(active, int(USABLE * free // max(per_client, 1))))


def check_chunk_fits(chunk_size: int, active: int, per_client: int, free: int, device: torch.device) -> None:
    """Raise one sentence naming ``engine.chunk_size`` when ``chunk_size`` clients at once cannot fit."""
    need = min(chunk_size, active) * per_client
    if need > USABLE * free:
        fit = int(USABLE * free // max(per_client, 1))
        hint = f"use engine.chunk_size={fit} (or 0 to choose automatically)" if fit >= 1 else "lower batch_size"
        raise FedrunError(
            f"engine.chunk_size={chunk_size} trains {min(chunk_size, active)} clients at once, which needs about "
            f"{gib(need)} but {device} has {gib(free)} free: {hint}."
        )


def check_data_fits(data, device: torch.device) -> None:
    """Raise one sentence naming ``device`` when the dataset cannot be moved onto a CUDA device."""
    device = torch.device(device)
    if device.type != "cuda":
        return
    need, free = data_bytes(data), free_bytes(device)
    if need > USABLE * free:
        raise FedrunError(
            f"the dataset needs {gib(need)} on {device} but only {gib(free)} is free there: use device=cpu "
            "or a smaller dataset."
        )
