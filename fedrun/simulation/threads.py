"""``threads=``: torch's intra-op threads for a run.

``threads=null`` (the default) picks by model size on a CPU: one thread for a model of at most
:data:`SMALL_MODEL_PARAMS` parameters, where each operation is too small to split and extra threads
only wait on each other (the synthetic default, ``rounds=20``, on the busy 2-core dev machine, load
8-16, torch 2.14.1: 5.6-7.7 s with one thread, 39-243 s with torch's two; README, Performance), and
torch's own choice for larger models and on a GPU. ``threads=N`` sets N. The previous count comes back when the run ends, so runs from
Python (:func:`fedrun.run`) leave the process as they found it.
"""

from __future__ import annotations

from typing import Optional

import torch

from fedrun.errors import FedrunError

SMALL_MODEL_PARAMS = 250_000


def choose_threads(setting: Optional[int], num_params: int, device: torch.device) -> Optional[int]:
    """The thread count to set, or None to keep torch's."""
    if setting is not None:
        if int(setting) < 1:
            raise FedrunError(f"threads={setting} is impossible: use threads=N with N >= 1, or threads=null to choose by model size.")
        return int(setting)
    if device.type == "cpu" and num_params <= SMALL_MODEL_PARAMS:
        return 1
    return None


def apply_threads(setting: Optional[int], num_params: int, device: torch.device) -> int:
    """Set the run's thread count; returns the count before, for the run to put back when it ends."""
    before = torch.get_num_threads()
    chosen = choose_threads(setting, num_params, device)
    if chosen is not None:
        torch.set_num_threads(chosen)
    return before
