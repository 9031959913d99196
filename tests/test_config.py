"""Every config option composes and builds; impossible values give one sentence."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from fedrun.config.schema import option_names
from fedrun.config.checks import validate
from fedrun.errors import FedrunError
from conftest import compose_config

GROUPS = ["algo", "data", "partition", "model", "engine"]


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in option_names(g)])
def test_every_option_composes_with_its_schema(group, option):
    cfg = compose_config(f"{group}={option}")
    node = cfg[group]
    assert OmegaConf.get_type(node).__name__.endswith("Schema"), "the generated schema was not applied"
    # the schema rejects an unknown key in this group
    with pytest.raises(Exception, match="no_such_key"):
        compose_config(f"{group}={option}", f"{group}.no_such_key=1")


BUILD_WITH_SYNTHETIC = ["algo", "partition", "model", "engine"]


@pytest.mark.parametrize("group,option", [(g, o) for g in BUILD_WITH_SYNTHETIC for o in option_names(g)])
def test_every_option_builds_and_runs_a_round(group, option):
    """Each algorithm, partitioner, model and engine instantiates and trains one round on synthetic data."""
    from conftest import build
    from fedrun.simulation.round import run_round

    overrides = [f"{group}={option}", "num_clients=10", "local_epochs=1", "participation=0.5", "data.mean_samples=40"]
    if group == "partition":
        overrides += ["partition.shards_per_client=1"] if option == "shards" else []
    elif group == "model" and option not in ("logreg", "mlp", "mlp_small"):
        pytest.skip(f"model={option} needs its own dataset shape (tested with its dataset)")
    exp = build(compose_config(*overrides))  # 10 devices x 40 samples: shards of 40 divide exactly
    out = run_round(exp, 1)
    assert out.active_clients >= 1 and out.train_loss > 0


def test_yaml_and_schema_defaults_agree_and_targets_import():
    import importlib

    for group in GROUPS:
        for option in option_names(group):
            cfg = compose_config(f"{group}={option}")
            module, _, attr = cfg[group]._target_.rpartition(".")
            assert hasattr(importlib.import_module(module), attr)


@pytest.mark.parametrize(
    "override,needle",
    [
        ("participation=0", "participation=0"),
        ("participation=1.5", "participation=1.5"),
        ("lr=-1", "lr=-1"),
        ("lr=0", "lr=0"),
        ("rounds=0", "rounds=0"),
        ("local_epochs=0", "local_epochs=0"),
        ("batch_size=0", "batch_size=0"),
        ("lr_decay=1.5", "lr_decay=1.5"),
        ("weight_decay=-1", "weight_decay=-1"),
        ("clip_norm=-1", "clip_norm=-1"),
        ("eval_every=0", "eval_every=0"),
        ("num_clients=0", "num_clients=0"),
    ],
)
def test_impossible_values_give_one_sentence(override, needle):
    cfg = compose_config(override)
    with pytest.raises(FedrunError) as err:
        validate(cfg)
    message = str(err.value)
    assert needle in message and "\n" not in message and message.endswith(".")
