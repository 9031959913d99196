"""The version of fedrun (ground: imports nothing)."""

__version__ = "0.1.0"
