"""A verified tensor cache: datasets converted once, then loaded in a fraction of a second.

A cache entry is a ``torch.save`` file of named tensors plus a sidecar ``<file>.json`` that records the
file's byte length and sha256. A load checks both before unpickling; a missing sidecar, a wrong length
or hash (a truncated or corrupt file, or a write that was interrupted) or a file torch cannot read
makes the entry invalid, and :func:`cached` rebuilds it (once, saying so; when that fails, one
sentence naming the cache file). Writes go to a temporary file that is renamed
into place, data first, sidecar last, so a crash never leaves an entry that verifies.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Callable, Optional

import torch

from fedrun.errors import FedrunError

log = logging.getLogger("fedrun")

FORMAT = 1  # bump when the layout of cached tensors changes: old entries are then rebuilt


def default_root(subdir: str = "") -> Path:
    """``$FEDRUN_DATA``, else ``$XDG_CACHE_HOME/fedrun/data``, else ``~/.cache/fedrun/data``."""
    env = os.environ.get("FEDRUN_DATA")
    if env:
        base = Path(env).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "fedrun" / "data"
    return base / subdir if subdir else base


def resolve_root(root: Optional[str], subdir: str = "") -> Path:
    return Path(root).expanduser() if root else default_root(subdir)


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _atomic_write(path: Path, payload: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a cache is as readable as any other file
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(path: Path, tensors: dict[str, torch.Tensor], meta: Optional[dict] = None) -> None:
    """Write ``tensors`` to ``path`` with its verifying sidecar."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save({k: v.contiguous() for k, v in tensors.items()}, buf)
    payload = buf.getvalue()
    record = {"format": FORMAT, "bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest(), "keys": sorted(tensors), **(meta or {})}
    _sidecar(path).unlink(missing_ok=True)
    _atomic_write(path, payload)
    _atomic_write(_sidecar(path), json.dumps(record, indent=1).encode())


def damage(path: Path) -> tuple[Optional[dict[str, torch.Tensor]], Optional[str]]:
    """(the tensors stored at ``path``, None) when the entry verifies; (None, None) when there is no
    entry (no file); (None, why) when there is one that cannot be used (damaged, stale,
    unreadable)."""
    side = _sidecar(path)
    if not path.is_file():
        return None, None
    if not side.is_file():
        return None, "it has no sidecar (a write that was interrupted)"
    try:
        record = json.loads(side.read_text())
        payload = path.read_bytes()
    except (OSError, ValueError) as err:
        return None, f"unreadable: {getattr(err, 'strerror', None) or type(err).__name__}"
    if not isinstance(record, dict):
        return None, "its sidecar is not a record"
    if record.get("format") != FORMAT or record.get("bytes") != len(payload):
        return None, "stale or truncated"
    if hashlib.sha256(payload).hexdigest() != record.get("sha256"):
        return None, "it fails its checksum"
    try:
        out = torch.load(io.BytesIO(payload), weights_only=True)
    except Exception:  # noqa: BLE001 - any unreadable file is rebuilt
        return None, "torch cannot read it"
    if not isinstance(out, dict) or not all(isinstance(v, torch.Tensor) for v in out.values()):
        return None, "it does not hold named tensors"
    if "keys" in record and sorted(out) != record["keys"]:
        return None, "it lacks some of its tensors"
    return out, None


def load(path: Path) -> Optional[dict[str, torch.Tensor]]:
    """The tensors stored at ``path``, or None when the entry is missing, stale or fails verification."""
    return damage(path)[0]


def cached(path: Path, build: Callable[[], dict[str, torch.Tensor]], meta: Optional[dict] = None) -> dict[str, torch.Tensor]:
    """Load ``path`` if it verifies, else ``build()`` the tensors and store them there.

    A damaged entry is rebuilt once from the source files, with a warning saying so; when that build
    fails with a sentence, the sentence names the damaged cache file too (the files it was made
    from are gone or unreadable, so the cache was the only copy)."""
    out, why = damage(path)
    if out is not None:
        return out
    if why is not None:
        log.warning("fedrun: the dataset cache %s is damaged (%s); rebuilding it from the source files", path, why)
    try:
        out = build()
    except FedrunError as err:
        if why is None:
            raise
        raise FedrunError(
            f"the dataset cache {path} is damaged ({why}) and rebuilding it failed: {err}"
        ) from None
    try:
        save(path, out, meta)
    except OSError as err:  # a read-only data folder still works, only without the cache
        log.warning("fedrun: cannot write the dataset cache %s (%s); set data.root to a writable folder to load faster", path, err.strerror)
    return out
