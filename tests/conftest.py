"""Shared test helpers: compose fedrun's Hydra config without the command line."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from fedrun.config import CONF_DIR, register_configs

register_configs()


def compose_config(*overrides: str):
    """The composed config for ``overrides``, as the ``fedrun`` command would see it."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@pytest.fixture
def compose_cfg():
    return compose_config
