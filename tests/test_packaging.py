"""The configs ship inside the package, and no run-output folder can shadow a fedrun module."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

import fedrun
from fedrun.config import CONF_DIR

REPO = Path(__file__).resolve().parent.parent
PACKAGE = Path(fedrun.__file__).resolve().parent


def test_configs_live_in_the_package_and_package_data_names_them_all():
    assert CONF_DIR.parent == PACKAGE and (CONF_DIR / "config.yaml").is_file()
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["fedrun"]
    yamls = {p.relative_to(PACKAGE) for p in CONF_DIR.rglob("*.yaml")}
    matched = {p.relative_to(PACKAGE) for pat in patterns for p in PACKAGE.glob(pat)}  # setuptools globs the same way
    assert yamls and matched == yamls


def test_no_fedrun_module_has_the_name_of_a_run_output_folder():
    """From the folder holding a checkout named fedrun, the checkout can be imported as a namespace
    package whose folders (outputs/, multirun/) stand in for modules of the same name."""
    hydra = yaml.safe_load((CONF_DIR / "config.yaml").read_text())["hydra"]
    folders = {Path(hydra["run"]["dir"]).parts[0], Path(hydra["sweep"]["dir"]).parts[0], "multirun"}
    assert folders == {"outputs", "multirun"}
    for name in folders:
        assert not (PACKAGE / f"{name}.py").exists() and not (PACKAGE / name).exists(), name


@pytest.mark.slow
def test_a_built_wheel_holds_every_config(tmp_path: Path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("fedrun-*.whl")
    names = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("fedrun/conf/")}
    assert names == {f"fedrun/{p.relative_to(PACKAGE).as_posix()}" for p in CONF_DIR.rglob("*.yaml")}
