"""``fedrun-report``: many run directories read back into tables and figures for papers.

Belongs here: reading run dirs (``runs.py``), the tables (``tables.py``), the figures
(``figures.py``), the figure style every fedrun figure shares (``style.py``: colours, markers,
labels, formats) and the command (``cli.py``). Works on the files runs left; never runs a round.

May import: :mod:`fedrun.rundir`, :mod:`fedrun.config` and the ground (no torch).
"""
