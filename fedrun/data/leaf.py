"""LEAF's JSON files (``{"users": [...], "user_data": {user: {"x": [...], "y": [...]}}}``), read for
the datasets LEAF ships (Shakespeare, FEMNIST)."""

from __future__ import annotations

import json
from pathlib import Path

from fedrun.errors import FedrunError


def read_users(files: list[Path], dataset: str, advice: str) -> dict[str, dict]:
    """Every user's samples from ``files``; a file that is not whole LEAF JSON is one sentence
    naming it and ``dataset``, ending with ``advice`` (what to do about it)."""
    users: dict[str, dict] = {}
    for f in files:
        try:
            data = json.loads(f.read_text())
            for u in data["users"]:
                users[u] = data["user_data"][u]
        except (ValueError, KeyError, TypeError) as err:
            raise FedrunError(f"data={dataset}: {f} is not whole LEAF JSON ({type(err).__name__}: {str(err)[:80]}){advice}") from None
    return users
