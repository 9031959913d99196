"""fedrun: a command-line experiment runner for federated-learning research."""

__version__ = "0.1.0"
