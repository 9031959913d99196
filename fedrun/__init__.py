"""fedrun: a command-line experiment runner for federated-learning research.

From Python: ``fedrun.run(["algo=fedavg", "rounds=20"])`` returns the metrics as a DataFrame and
``fedrun.compose([...])`` the config (:mod:`fedrun.api`). Both are imported on first use, so
``import fedrun`` stays light (no torch).

The package is one folder per stage of the data flow, each importing only the stages below it
(pyproject.toml's import-linter contract, checked by ``make lint`` and ``tests/test_layers.py``)::

    config/       the typed, frozen specs read from the Hydra config (the only reader of the raw config)
    data/         datasets as tensors, and their partition into clients
    models/       the model zoo, and a model as a function of one flat parameter vector
    algorithms/   FedDyn and the others: pure tensor code on a frozen Round
    state/        per-client state tables, indexed by client id
    engines/      local training of a round's active clients (sequential, vectorized)
    distributed/  one run over several processes (torchrun)
    simulation/   a run built from its spec; one round; evaluation
    rundir/       the run directory: lock, resume, checkpoints, the finish
    report/       fedrun-report: tables and figures from many run dirs
    observers/    what watches the rounds: progress, trackers, per-client evaluation, checkpoints
    runner.py     start, the round loop, the end of a run
    cli/          the fedrun command
    api.py        fedrun.run, fedrun.compose
    errors.py, seeding.py, version.py    the ground: imported by all, importing nothing of fedrun
"""

from fedrun.version import __version__
__all__ = ["run", "compose", "__version__"]


def __getattr__(name: str):
    if name in ("run", "compose"):
        from fedrun import api

        return getattr(api, name)
    raise AttributeError(f"module 'fedrun' has no attribute {name!r}")
