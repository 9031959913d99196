"""Every `fedrun ...` command in README.md and docs/ composes as written (the command's own pre-check:
unknown keys and options, types, values, every combination of a sweep), without running it."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from fedrun.cli.precheck import precheck
from fedrun.config.schema import register_configs
from fedrun.errors import FedrunError

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def commands() -> list[tuple[str, str]]:
    """(file, command) for every line of a code block or indented block that starts with ``fedrun ``."""
    found = []
    for path in DOCS:
        in_block = False
        for line in path.read_text().splitlines():
            if line.strip().startswith("```"):
                in_block = not in_block
                continue
            text = line.strip()
            if (in_block or line.startswith("    ")) and re.match(r"^fedrun(\s|$)", text):
                command = text.split("  #")[0].split(" # ")[0].strip()
                if "<" not in command and "..." not in command and "\\" not in command:  # placeholders and continued lines aside
                    found.append((path.name, command))
    return found


COMMANDS = commands()


def test_the_readme_has_commands_to_check():
    assert any("feddyn_alpha0.1" in c for _, c in COMMANDS)  # the sweep over a preset


def _param(where: str, command: str):
    """A sweep over an experiment's whole grid (``fedrun -m experiment=X ...``) composes dozens of
    configs; every value of those grids is composed by tests/test_experiments.py and
    tests/test_fl_simulator.py in make test, so the command as written runs with the slow tests."""
    slow = re.match(r"^fedrun -m experiment=\S+", command) is not None
    return pytest.param(where, command, id=f"{where}:{command[:60]}", marks=[pytest.mark.slow] if slow else [])


@pytest.mark.parametrize("where,command", [_param(w, c) for w, c in COMMANDS])
def test_command_composes_as_written(where, command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    register_configs()
    argv = shlex.split(command)[1:]
    if any(a in ("--help", "-h", "--version") for a in argv):
        return  # answered by fedrun.cli.help, tested in test_api.py
    if "resume=true" in argv:  # continues an earlier run: without one, the sentence says what to do
        with pytest.raises(FedrunError, match="resume=true found no checkpoint"):
            precheck(argv)
        return
    precheck(argv)  # raises FedrunError with the sentence the command would print
