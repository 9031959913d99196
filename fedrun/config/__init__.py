"""The config: schemas generated from signatures, value checks, and the typed frozen specs.

Belongs here: the only code that reads a composed (raw) config. ``schema.py`` registers one schema
per group option with Hydra (unknown keys and wrong types fail at compose time) and lists the keys
that change no result; ``checks.py`` refuses impossible values with one sentence; ``specs.py`` reads
the config once into the frozen dataclasses every other stage is handed; ``bounds.py`` (declared
bounds of arguments) and ``sizes.py`` (what the machine can hold) work on plain values. No torch.

May import: the ground (:mod:`fedrun.errors`, :mod:`fedrun.seeding`, :mod:`fedrun.version`) only.
"""

from pathlib import Path


def _conf_dir() -> Path:
    """The Hydra configs: ``fedrun/conf`` in an installed wheel (pyproject maps the repository's
    ``conf/`` there), else ``conf/`` at the top of the source checkout (editable installs, tests)."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "conf", package.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    return package.parent / "conf"


CONF_DIR = _conf_dir()
