"""Engines run local training for a round's active clients (see :mod:`fedrun.engines.base`)."""
