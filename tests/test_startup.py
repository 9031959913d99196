"""Answers without torch: override checks, --help, --version and shell completion read the targets'
signatures from fedrun/config/signatures.py's cache instead of importing the models and algorithms."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fedrun.config import signatures
from fedrun.config.schema import CONF_DIR, RUNTIME_ARGS, register_configs

REPO = Path(__file__).resolve().parent.parent
TARGETS = sorted({t for g in RUNTIME_ARGS for p in (CONF_DIR / g).glob("*.yaml")
                  if (t := (yaml.safe_load(p.read_text()) or {}).get("_target_"))})


def test_the_cache_holds_what_the_signatures_say(monkeypatch):
    """Every target's cached entry (JSON round trip) equals a fresh read of its signature, and so do
    the schema fields and bounds made from it."""
    register_configs()  # fills the cache when stale
    table = signatures._load()
    for target in TARGETS:
        fresh = signatures.read_signature(target)
        assert table["targets"][target] == fresh, target
        assert [(n, t) for n, t, _ in signatures.fields(fresh, set())] == [(n, t) for n, t, _ in signatures.fields(table["targets"][target], set())]
    mlp = signatures.bounds(table["targets"]["fedrun.models.MLP"])
    assert not mlp["hidden"].admits([-5]) and mlp["hidden"].admits([200, 200])


def test_an_edited_source_makes_the_cache_stale(tmp_path, monkeypatch):
    (tmp_path / "a.py").write_text("x = 1\n")
    monkeypatch.setattr(signatures, "PACKAGE", tmp_path)
    before = signatures.fingerprint()
    (tmp_path / "a.py").write_text("x = 22\n")  # another size (and mtime)
    assert signatures.fingerprint() != before
    monkeypatch.setattr(signatures, "_MEMO", {})
    (tmp_path / signatures.FILE).write_text('{"fingerprint": "old", "targets": {"fedrun.x.Y": {}}}')
    assert signatures._load()["targets"] == {}  # another fingerprint: nothing of it is used


def _fresh_process(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``fedrun ARGS`` through the console script's entry point in a new process, which then reports
    whether torch was imported."""
    code = ("import sys; from fedrun.cli.help import main; sys.argv = ['fedrun', *sys.argv[1:]]\n"
            "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\nelse:\n    code = 0\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr); sys.exit(code)")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


@pytest.mark.parametrize("args,code,needle", [
    (["algo.alpah=1"], 2, "algo.alpah is not a key of algo=feddyn: did you mean algo.alpha?"),
    (["algo=fedav"], 2, "algo=fedav is not an option of algo"),
    (["model=mlp", "model.hidden=[-5]"], 2, "model.hidden=[-5] is not valid"),
    (["participation=1.5"], 2, "participation=1.5 is out of range"),
    (["rounds=abc"], 2, "rounds"),
])
def test_bad_overrides_answer_without_torch(args, code, needle):
    register_configs()  # a warm cache, as after the first command
    proc = _fresh_process(args)
    assert proc.returncode == code and needle in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().endswith("NO-TORCH")


def test_shell_completion_answers_without_torch():
    register_configs()
    proc = _fresh_process(["-sc", "query=bash"], env={"COMP_LINE": "fedrun algo=fed", "COMP_POINT": "15"})
    assert proc.returncode == 0 and "algo=feddyn" in proc.stdout.split() and "algo=fedavg" in proc.stdout.split()
    assert proc.stderr.strip().endswith("NO-TORCH")
