"""The run directory: what a run leaves on disk, and how a run continues from it.

Belongs here: the lock (``lock.py``), the resume-or-start decision (``resume.py``), checkpoints
(``checkpoint.py``; per-rank shards in ``ranked.py``), the finish in its kill-safe order
(``finish.py``), stop signals (``signals.py``), the metrics writer and atomic JSON (``files.py``),
and what made a run (``provenance.py``). A run dir is trusted only after ``resume.decide`` checked it.

May import: :mod:`fedrun.simulation` and every stage below it.
"""
