"""The config-relevant part of each target's signature, cached so the CLI answers without torch.

:func:`fedrun.config.schema.schema_for` (the generated schemas) and :func:`fedrun.config.schema.bounds_for` (the
bounds checks) need each ``_target_``'s parameters: names, type hints, defaults and ``Bound``s. Reading
them imports the target's module, and fedrun's models, algorithms and engines import torch (seconds,
more under load): every bad override, ``--help`` of a group and TAB of shell completion paid it. So
the signatures of fedrun's own targets are written once to a JSON file and read back from it:

- the file lives in the package (``fedrun/.signatures.json``, next to this module) when that folder is
  writable (a checkout, an editable install), else in ``$FEDRUN_CACHE`` or ``~/.cache/fedrun``;
- it is valid for one fingerprint of the package's sources (path, size and mtime of every ``*.py``
  under ``fedrun/``, and fedrun's version): an edited module makes it stale, and the next command
  rebuilds it (importing the targets once);
- only targets under ``fedrun.`` are cached; a user's own target (``_target_: mypkg.Model``) is read
  by importing it, as before.

A signature entry is ``[name, type, default]`` per parameter, the type one of ``int float str bool
any``, ``opt:<type>``, ``list:<type>`` or ``enum:<Name>:<v1>,<v2>`` (OmegaConf's schema types), the
default a JSON value or ``{"missing": true}``; and ``bounds``: ``{name: Bound fields}``.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import importlib
import inspect
import json
import os
import typing
from pathlib import Path
from typing import Any, Optional

PACKAGE = Path(__file__).resolve().parents[1]  # the fedrun package (this file is fedrun/config/signatures.py)
FILE = ".signatures.json"
_MEMO: dict[str, Any] = {}


def fingerprint() -> str:
    """A hash of every source file's path, size and mtime under the package, and the version."""
    from fedrun.version import __version__

    h = hashlib.blake2b(__version__.encode(), digest_size=12)
    for path in sorted(PACKAGE.rglob("*.py")):
        st = path.stat()
        h.update(f"{path.relative_to(PACKAGE)}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()


def cache_path() -> Path:
    if os.access(PACKAGE, os.W_OK):
        return PACKAGE / FILE
    return Path(os.environ.get("FEDRUN_CACHE") or Path.home() / ".cache" / "fedrun") / FILE


def annotation(tp: Any) -> Any:
    """Map a target's type hint onto one OmegaConf understands."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:  # a Bound (fedrun/config/bounds.py) is checked by validate, not by the schema
        return annotation(args[0])
    if origin is typing.Union:
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return Optional[annotation(inner[0])]
        return Any
    if origin in (list, tuple, typing.Sequence, List) or tp in (list, tuple):
        item = args[0] if args and args[0] is not Ellipsis else Any
        return List[annotation(item)] if item in (int, float, str, bool) else List[Any]
    if tp in (int, float, str, bool) or (inspect.isclass(tp) and issubclass(tp, enum.Enum)):
        return tp
    return Any


def _type_code(tp: Any) -> str:
    """The schema type of a hint, as :func:`annotation` maps it, as text."""
    tp = annotation(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        return "opt:" + _type_code(next(a for a in args if a is not type(None)))
    if origin in (list, List):
        return "list:" + _type_code(args[0])
    if inspect.isclass(tp) and issubclass(tp, enum.Enum):
        return f"enum:{tp.__name__}:" + ",".join(m.name for m in tp)
    return {int: "int", float: "float", str: "str", bool: "bool"}.get(tp, "any")


List = typing.List


def _from_code(code: str) -> Any:
    if code.startswith("opt:"):
        return Optional[_from_code(code[4:])]
    if code.startswith("list:"):
        return List[_from_code(code[5:])]
    if code.startswith("enum:"):
        _, name, values = code.split(":", 2)
        return enum.Enum(name, {v: v for v in values.split(",")})
    return {"int": int, "float": float, "str": str, "bool": bool}.get(code, Any)


def _default_code(default: Any) -> Any:
    if default is inspect.Parameter.empty:
        return {"missing": True}
    if isinstance(default, enum.Enum):
        return default.name
    if isinstance(default, tuple):
        return list(default)
    json.dumps(default)  # anything else must be plain data (a TypeError otherwise: not cached)
    return default


def read_signature(target: str) -> dict[str, Any]:
    """``{"params": [[name, type, default, kind]], "bounds": {...}}`` of ``target``, by importing it."""
    from fedrun.config.bounds import Bound

    module_name, _, attr = target.rpartition(".")
    obj = getattr(importlib.import_module(module_name), attr)
    func = obj.__init__ if inspect.isclass(obj) else obj
    hints = typing.get_type_hints(func, include_extras=True)
    params = []
    for name, param in inspect.signature(obj).parameters.items():
        variadic = param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD)
        params.append([name, _type_code(hints.get(name, Any)), None if variadic else _default_code(param.default), variadic])
    bounds = {}
    for name, tp in hints.items():
        found = [m for m in getattr(tp, "__metadata__", ()) if isinstance(m, Bound)]
        if found:
            bounds[name] = dataclasses.asdict(found[0])
    return {"params": params, "bounds": bounds}


def _load() -> dict[str, Any]:
    if "table" in _MEMO:
        return _MEMO["table"]
    stamp = fingerprint()
    try:
        table = json.loads(cache_path().read_text())
        if table.get("fingerprint") != stamp:
            table = {"fingerprint": stamp, "targets": {}}
    except (OSError, ValueError):
        table = {"fingerprint": stamp, "targets": {}}
    _MEMO["table"] = table
    return table


def _save(table: dict[str, Any]) -> None:
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(table, sort_keys=True))
        os.replace(tmp, path)
    except OSError:  # a read-only place: the signatures are read by importing, every time
        pass


def signature(target: str) -> dict[str, Any]:
    """``target``'s cached signature (see the module docstring), read by importing when not cached."""
    if not target.startswith("fedrun."):
        return read_signature(target)
    table = _load()
    entry = table["targets"].get(target)
    if entry is None:
        entry = read_signature(target)
        try:
            json.dumps(entry)
        except TypeError:
            return entry
        table["targets"][target] = entry
        _save(table)
    return entry


def warm(targets: list[str]) -> None:
    """Read every fedrun target missing from the cache in one go (one torch import, one write)."""
    table = _load()
    missing = [t for t in targets if t.startswith("fedrun.") and t not in table["targets"]]
    for target in missing:
        try:
            table["targets"][target] = read_signature(target)
        except Exception:  # noqa: BLE001 - a target that cannot be read fails later, with its own sentence
            continue
    if missing:
        _save(table)


def fields(entry: dict[str, Any], skip: set[str]) -> list[tuple[str, Any, Any]]:
    """The dataclass fields (name, type, default or MISSING) of a signature entry, ``skip`` left out."""
    from omegaconf import MISSING

    out = []
    for name, code, default, variadic in entry["params"]:
        if name in skip or variadic:
            continue
        tp = _from_code(code)
        if isinstance(default, dict) and default.get("missing"):
            out.append((name, tp, dataclasses.field(default=MISSING)))
        elif isinstance(default, list):
            out.append((name, tp, dataclasses.field(default_factory=lambda d=default: list(d))))
        else:
            if code.startswith(("enum:", "opt:enum:")) and default is not None:
                default = getattr(typing.get_args(tp)[0] if code.startswith("opt:") else tp, default)
            out.append((name, tp, dataclasses.field(default=default)))
    return out


def bounds(entry: dict[str, Any]) -> dict[str, Any]:
    from fedrun.config.bounds import Bound

    return {name: Bound(**b) for name, b in entry["bounds"].items()}
