"""fedrun: a command-line experiment runner for federated-learning research.

From Python: ``fedrun.run(["algo=fedavg", "rounds=20"])`` returns the metrics as a DataFrame and
``fedrun.compose([...])`` the config (:mod:`fedrun.api`). Both are imported on first use, so
``import fedrun`` stays light (no torch).
"""

__version__ = "0.1.0"
__all__ = ["run", "compose", "__version__"]


def __getattr__(name: str):
    if name in ("run", "compose"):
        from fedrun import api

        return getattr(api, name)
    raise AttributeError(f"module 'fedrun' has no attribute {name!r}")
