"""The house rules: stage packages import only the stages below them, and no module imports itself back.

The layers are pyproject.toml's import-linter contract (``lint-imports``, also run by ``make lint``);
this test runs the same contract, and looks for import cycles between modules anywhere in fedrun,
inside a stage too (the contract only orders the stages).
"""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import grimp
import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph("fedrun", cache_dir=None)


def test_the_import_linter_contract_holds():
    lint = shutil.which("lint-imports")  # import-linter, from the dev extra
    assert lint, "lint-imports is not installed: make install"
    proc = subprocess.run([lint, "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "1 kept, 0 broken" in proc.stdout, proc.stdout[-3000:]


def test_the_layers_name_every_stage_and_module_of_the_package():
    contract = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]
    named = {part.strip() for layer in contract["layers"] for part in layer.split("|")}
    here = {p.stem for p in (REPO / "fedrun").glob("*.py") if p.stem not in ("__init__", "__main__")}
    here |= {p.parent.name for p in (REPO / "fedrun").glob("*/__init__.py")}
    assert named == here


def test_no_import_cycles(graph):
    cycles = []
    for module in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if imported.startswith(module + ".") or module.startswith(imported + "."):
                continue  # a package and its own modules (an __init__ re-exporting them)
            back = graph.find_shortest_chain(importer=imported, imported=module)
            if back is not None:
                cycles.append(" -> ".join([module, *back]))
    assert not cycles, "\n".join(cycles)
