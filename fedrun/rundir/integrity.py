"""Whether a checkpoint can be trusted: its checksum, and whether its parts fit together.

:func:`digest` is a SHA-256 over a payload's content (every tensor's dtype, shape and bytes, every
other value's repr); :func:`check_digest` refuses a payload whose checksum does not match and
:func:`check_content` one whose round, rows, counters and config do not fit together (a hand edit
that recomputed the checksum). Every refusal is :func:`damaged`'s one sentence.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from fedrun.errors import FedrunError


def digest(value: Any) -> str:
    """SHA-256 of ``value``'s content: every tensor's dtype, shape and bytes, every container's
    structure, every other value's type and repr (a float's repr is exact)."""
    h = hashlib.sha256()
    _feed(h, value)
    return h.hexdigest()


def _feed(h: Any, value: Any) -> None:
    import torch

    if isinstance(value, torch.Tensor):
        t = value.detach().to("cpu").contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)};".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    elif isinstance(value, dict):
        h.update(f"D{len(value)};".encode())
        for key, item in value.items():
            _feed(h, key)
            _feed(h, item)
    elif isinstance(value, (list, tuple)):
        h.update(f"{type(value).__name__[0]}{len(value)};".encode())
        for item in value:
            _feed(h, item)
    else:
        h.update(f"{type(value).__name__}:{value!r};".encode())


def damaged(path: Path, why: str) -> FedrunError:
    """The one sentence for a checkpoint (or a file it needs) that cannot be trusted."""
    path = Path(path)
    return FedrunError(
        f"{path.name} in {path.parent} is damaged: {why}; delete it to start over "
        "(or add resume=false), or restore it from a backup."
    )


def with_digest(payload: dict[str, Any]) -> dict[str, Any]:
    return {**payload, "digest": digest(payload)}


def check_digest(payload: Any, path: Path) -> dict[str, Any]:
    """``payload`` (read from ``path``) when its checksum matches its content; else one sentence."""
    if not isinstance(payload, dict) or "digest" not in payload:
        raise damaged(path, "it holds no checksum (not written by this fedrun, or edited by hand)")
    body = {k: v for k, v in payload.items() if k != "digest"}
    try:
        ok = digest(body) == payload["digest"]
    except Exception:  # noqa: BLE001 - a tensor whose storage is cut short (truncated file)
        ok = False
    if not ok:
        raise damaged(path, "its checksum does not match its content (a disk fault, a truncation or a hand edit)")
    return body


def check_content(ckpt: dict[str, Any], path: Path) -> None:
    """Refuse a checkpoint whose parts do not fit together (a hand edit that kept a valid checksum,
    or a bug): its round, rows, counters and config."""
    import torch

    def bad(why: str) -> FedrunError:
        return damaged(path, why)

    rnd, rows, config = ckpt.get("round"), ckpt.get("rows"), ckpt.get("config")
    if type(rnd) is not int or rnd < 1:
        raise bad(f"its round is {rnd!r}, not a round number >= 1")
    if not isinstance(config, dict) or not isinstance(ckpt.get("theta"), torch.Tensor):
        raise bad("it has no config or no server model")
    if not isinstance(rows, list) or not all(isinstance(r, dict) and type(r.get("round")) is int for r in rows):
        raise bad("its metrics rows are not rows fedrun wrote")
    done = [r["round"] for r in rows]
    if done != sorted(set(done)) or (done and (done[0] < 1 or done[-1] > rnd)):
        raise bad(f"its metrics rows (rounds {done[:3]}...) are not increasing rounds within 1..{rnd}")
    every = config.get("eval_every")
    if type(every) is int and every >= 1 and not set(range(every, rnd + 1, every)) <= set(done):
        raise bad(f"it lacks metrics rows of rounds up to {rnd} (eval_every={every})")
    counters = ckpt.get("counters")
    if not isinstance(counters, dict) or counters.get("round") != rnd:
        raise bad("its counters do not belong to its round")
