"""The ``fedrun`` command: the entry point, ``--help``/``--version``, the override precheck, the error boundary.

Belongs here: what talks to a person on the command line. ``help.py`` answers before anything heavy
is imported; ``precheck.py`` turns a bad override into one sentence before Hydra makes a run dir;
``boundary.py`` turns every other failure into one sentence and an exit code; ``main.py`` is the Hydra
entry point around :func:`fedrun.runner.run`; ``launch.py`` is the GPU-slot Hydra callback for sweeps.

May import: every stage below it (:mod:`fedrun.runner` and down), never :mod:`fedrun.api`.
"""
