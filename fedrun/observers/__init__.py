"""What watches the rounds: the observers the round loop calls at fixed points (``base.py``).

Belongs here: the progress display, experiment trackers, per-client evaluation and its table, the
metrics rows and checkpoints as they are written, the per-run convergence plot. An observer never
changes what a round computes.

May import: :mod:`fedrun.report` (the figure style) and every stage below it.
"""
