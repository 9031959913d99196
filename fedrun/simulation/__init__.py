"""The simulation: a run built from its spec, one round at a time, and its evaluation.

Belongs here: ``build.py`` (data, partition, model, algorithm, engine and client state from the
spec), ``round.py`` (one communication round and the evaluation of its models), client sampling,
the state-table plumbing of a round (``rounds.py``), evaluation, the per-client held-out splits, the
divergence guard, the mean of all clients' models, determinism and thread settings.

May import: :mod:`fedrun.distributed` and every stage below it; nothing that writes a run dir.
"""
