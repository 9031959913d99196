"""What produced a run, for ``summary.json``: fedrun's version, the git commit of its source (when it
runs from a git checkout), torch's version and the device's name."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Any, Optional

import torch

from fedrun.version import __version__


def git_commit(path: Path = Path(__file__).resolve().parent) -> Optional[str]:
    """The commit of the checkout fedrun's code lives in (``+dirty`` with uncommitted changes), or None."""
    try:
        head = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:  # Linux names the CPU only here
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def provenance(device: torch.device) -> dict[str, Any]:
    return {
        "fedrun_version": __version__,
        "git_commit": git_commit(),
        "torch_version": torch.__version__,
        "device": str(device),
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
    }
