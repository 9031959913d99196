"""The configs live at the top of the repository (conf/) and ship inside the wheel as fedrun/conf;
no run-output folder can shadow a fedrun module; the installed wheel runs from anywhere."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest
import yaml

import fedrun
from fedrun.config import CONF_DIR

REPO = Path(__file__).resolve().parent.parent
PACKAGE = Path(fedrun.__file__).resolve().parent


def test_configs_live_at_the_top_and_package_data_names_them_all():
    assert CONF_DIR == REPO / "conf" and (CONF_DIR / "config.yaml").is_file()
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["package-dir"]["fedrun.conf"] == "conf"
    patterns = setuptools["package-data"]["fedrun.conf"]
    yamls = {p.relative_to(CONF_DIR) for p in CONF_DIR.rglob("*.yaml")}
    matched = {p.relative_to(CONF_DIR) for pat in patterns for p in CONF_DIR.glob(pat)}  # setuptools globs the same way
    assert yamls and matched == yamls


def test_every_package_folder_is_listed_for_the_wheel():
    """pyproject lists the packages by hand (fedrun.conf is mapped from conf/): a new stage folder
    left out of that list would be missing from the wheel."""
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {"fedrun"} | {f"fedrun.{p.parent.name}" for p in PACKAGE.glob("*/__init__.py")}
    plugins = {f"hydra_plugins.{p.parent.name}" for p in (REPO / "hydra_plugins").glob("*/__init__.py")}  # the default sweeper's name for Hydra
    assert plugins == {"hydra_plugins.fedrun_sweeper"}
    assert listed == folders | {"fedrun.conf"} | plugins


def test_no_fedrun_module_has_the_name_of_a_run_output_folder():
    """From the folder holding a checkout named fedrun, the checkout can be imported as a namespace
    package whose folders (outputs/, multirun/) stand in for modules of the same name."""
    hydra = yaml.safe_load((CONF_DIR / "config.yaml").read_text())["hydra"]
    folders = {Path(hydra["run"]["dir"]).parts[0], Path(hydra["sweep"]["dir"]).parts[0], "multirun"}
    assert folders == {"outputs", "multirun"}
    for name in folders:
        assert not (PACKAGE / f"{name}.py").exists() and not (PACKAGE / name).exists(), name


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q", "-w", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (found,) = out.glob("fedrun-*.whl")
    return found


@pytest.mark.slow
def test_the_wheel_holds_every_config_and_module(wheel: Path):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {n for n in names if n.startswith("fedrun/conf/")} == {f"fedrun/conf/{p.relative_to(CONF_DIR).as_posix()}" for p in CONF_DIR.rglob("*.yaml")}
    sources = [*PACKAGE.rglob("*.py"), *(REPO / "hydra_plugins").rglob("*.py")]  # fedrun and its Hydra sweeper plugin
    assert {n for n in names if n.endswith(".py")} == {p.relative_to(REPO).as_posix() for p in sources}


@pytest.mark.slow
def test_the_installed_wheel_runs_from_another_directory(wheel: Path, tmp_path: Path):
    """A fresh venv (torch and the other needs from the system site) with the wheel installed, not
    editable: ``fedrun rounds=2`` and ``fedrun --cfg job`` from a folder with no checkout in sight."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=True)
    py = env_dir / "bin" / "python"
    proc = subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--force-reinstall", "-q", str(wheel)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # the system site has fedrun installed editable from this checkout: hide it, so only the wheel counts
    code = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in type(f).__module__ "
            "and 'editable' not in getattr(f, '__name__', '')]; from fedrun.cli.help import main; "
            "import fedrun; assert 'site-packages' in fedrun.__file__ and str(sys.argv) ; sys.exit(main())")
    where = subprocess.run([str(py), "-c", code.replace("sys.exit(main())", "print(fedrun.__file__)")], cwd=work,
                           capture_output=True, text=True, env=env, timeout=120)
    assert where.returncode == 0 and str(env_dir) in where.stdout, where.stderr[-2000:]
    job = subprocess.run([str(py), "-c", code, "--cfg", "job"], cwd=work, capture_output=True, text=True, env=env, timeout=300)
    assert job.returncode == 0, job.stderr[-2000:]
    assert yaml.safe_load(job.stdout)["algo"]["_target_"] == "fedrun.algorithms.feddyn.FedDyn"
    run = subprocess.run([str(py), "-c", code, "rounds=2", "hydra.run.dir=run", "progress=false"], cwd=work,
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert len((work / "run" / "metrics.csv").read_text().splitlines()) == 3  # header + 2 rounds
