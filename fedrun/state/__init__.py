"""Per-client state: one store of ``[num_clients, num_params]`` tables, indexed by client id.

Belongs here: the stores (``store.py``: device or pinned memory, or memory-mapped files), their undo
journal (``journal.py``) and the memory estimates that choose a placement (``memory.py``).

May import: :mod:`fedrun.algorithms`, :mod:`fedrun.models`, :mod:`fedrun.data`, :mod:`fedrun.config`
and the ground.
"""
