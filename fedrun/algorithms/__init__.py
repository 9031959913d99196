"""Federated algorithms, one module each, on the interface in :mod:`fedrun.algorithms.base`."""
