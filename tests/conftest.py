"""The one way tests get a config: :func:`compose_config` composes fedrun's Hydra config from
overrides, as the ``fedrun`` command would see it (``hydra=True``: with Hydra's own node too).

Runs made in the test process skip the per-run convergence figure (:func:`no_run_figure`): drawing it
costs more than a tiny run's rounds. tests/test_cli.py checks the figure through the real command."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from fedrun.config.schema import CONF_DIR, register_configs

register_configs()


def compose_config(*overrides: str, hydra: bool = False):
    """The composed config for ``overrides``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=hydra)


@pytest.fixture(autouse=True)
def no_run_figure(monkeypatch):
    import fedrun.runner

    monkeypatch.setattr(fedrun.runner, "convergence_plot", lambda *args, **kwargs: None)


@pytest.fixture
def compose_cfg():
    return compose_config


@pytest.fixture
def restore_logging():
    """In-process Hydra runs (``fedrun.cli.main.main()``) attach log handlers to streams pytest closes
    afterwards: undo that."""
    import logging

    loggers = [logging.getLogger(), logging.getLogger("fedrun"), logging.getLogger("hydra")]
    saved = [(lg, list(lg.handlers), lg.level, lg.propagate) for lg in loggers]
    yield
    for lg, handlers, level, propagate in saved:
        for h in lg.handlers:
            if h not in handlers:
                h.close()
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate = propagate


@pytest.fixture(scope="module")
def one_thread():
    """One torch intra-op thread for a test module (restored after): tiny tensors stall on a busy
    2-core machine with two, and the sequential engine's CPU kernels round differently with two
    threads (by ~1e-7), which the bit-for-bit comparisons must not see.
    Use as ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)



def build(cfg, **kwargs):
    """The run of a composed config (its spec read as a run reads it)."""
    from fedrun.config import specs
    from fedrun.simulation.build import build as build_spec

    return build_spec(specs.read(cfg), **kwargs)
