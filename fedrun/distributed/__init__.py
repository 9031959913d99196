"""One run over several processes with torch.distributed: ranks, the sharding rule, collectives, errors.

Design
------
*Launch.* ``torchrun --nproc-per-node N -m fedrun <overrides>`` (several nodes: ``--nnodes`` and a
rendezvous endpoint; SLURM: ``srun torchrun ...``, see the README). fedrun recognises torchrun's
environment (``WORLD_SIZE`` > 1 with ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) and
joins one process group (:func:`setup`): NCCL when CUDA is available (rank -> GPU ``LOCAL_RANK``, one
rank per GPU), gloo on CPUs. There is no config key: the same overrides without torchrun are the
same run in one process, and a run's config (and run dir) does not depend on N.

*Same run everywhere.* Every rank builds the same data, partition, model, algorithm and server
state from the same seed, and draws the same active clients each round (sampling depends only on
seed and round). Only rank 0 writes the run dir (``.hydra/``, ``metrics.csv``, ``summary.json``,
plots); its run dir is broadcast to the others before Hydra starts (:func:`share_precheck`).

*Ownership.* Client k belongs to rank ``k mod N`` (:meth:`Ranks.owner`). That rank alone keeps k's row
of every client-state table (row ``k // N`` of its shard, :class:`fedrun.distributed.sharded.ShardedStore`; each
rank places its shard on the device, in pinned memory or in mmap files by the single-process rule
applied to its own rows), and trains k when k is active (:class:`fedrun.distributed.sharded.ShardedEngine`: the
round's active clients it owns, vectorised, through the configured engine). Training shares follow
ownership, so a rank never needs another rank's rows to train; with Bernoulli sampling each rank
gets A/N active clients on average.

*Aggregation, exact.* Results are gathered, not reduced: every rank contributes its clients' rows
and :func:`gather_rows` places them at their positions in the (sorted) active list, so every rank
holds the same ``[A, P]`` models, losses and step counts as one process would. The active clients'
old state rows are gathered the same way when the runner opens the round (one read per table).
Every rank then runs the algorithm's own objective, client and server updates on these full
tensors, so the server model, the server state and the metrics are bit-identical to one process for
any N (the engines compute a client's row independently of the other clients trained with it; on
CPU, given the same number of torch threads per process, since some kernels round differently with
more threads). Evaluation runs on every rank (the same numbers; no rank waits less). Cost per round
and rank: receiving ``(1 + T)·A·P`` floats (T = state tables read), and the server update repeated
on every rank (``O(A·P)`` elementwise work, small next to ``E·n_k/B`` local steps per client);
state memory and training work divide by N. A sum all-reduce (``O(P)`` per aggregate, independent
of A) is the way when ``A·P`` floats per round no longer fit a rank or the network (e.g. 1,000
clients of an 11M-parameter model: 44 GB per round): each rank would sum its share's contributions
(Σθ_k, Σ(s_k⁺ − s_k), losses) and all-reduce them, and results would then match one process only to
float32 summation order. fedrun does not do that yet.

*Errors.* A failure inside local training on any rank is agreed on by an all-reduce of an error flag
right after training (:func:`agree`): every rank stops with that rank's one sentence. A rank that
dies (killed, out of memory) closes its connections, so the others' next collective fails within
seconds and they stop with :class:`PeerLost`'s sentence; a rank that hangs is caught by the process
group's timeout (``FEDRUN_DIST_TIMEOUT_S``, default 600 s). Checkpoints hold every rank's shard
(:mod:`fedrun.rundir.ranked`); a stopped run resumes with the same N.
"""

from __future__ import annotations

import datetime
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist

from fedrun.errors import FedrunError

log = logging.getLogger("fedrun")

DEFAULT_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run: rank ``rank`` of ``size``; ``comm``: where collectives run."""

    rank: int
    size: int
    local_rank: int
    backend: str

    @property
    def writer(self) -> bool:
        """Whether this rank writes the run dir (rank 0)."""
        return self.rank == 0

    @property
    def comm(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")

    def owner(self, ids: torch.Tensor) -> torch.Tensor:
        """The rank that owns each client id: ``id mod size``."""
        return ids % self.size

    def owned(self, ids: torch.Tensor) -> torch.Tensor:
        """Positions in ``ids`` of the clients this rank owns."""
        return torch.nonzero(self.owner(ids) == self.rank).flatten()

    def local_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows of owned client ``ids`` in this rank's shard: ``id // size``."""
        return ids // self.size

    def shard_size(self, num_clients: int) -> int:
        """How many of ``num_clients`` clients this rank owns."""
        return len(range(self.rank, num_clients, self.size))


_CURRENT: Optional[Ranks] = None
_ROUND = 0  # the round in progress, for error messages


def requested() -> bool:
    """Whether this process was started as one of several ranks (torchrun's environment)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def current() -> Optional[Ranks]:
    """This process's :class:`Ranks`, or None in a single-process run."""
    return _CURRENT


def timeout_s() -> float:
    value = os.environ.get("FEDRUN_DIST_TIMEOUT_S", str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise FedrunError(f"FEDRUN_DIST_TIMEOUT_S={value} is not a positive number of seconds: set e.g. FEDRUN_DIST_TIMEOUT_S=600.")
    return seconds


def setup() -> Optional[Ranks]:
    """Join the process group described by torchrun's environment (None when WORLD_SIZE is 1)."""
    global _CURRENT
    if _CURRENT is not None or not requested():
        return _CURRENT
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise FedrunError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE']} is set but {', '.join(missing)} is not: start fedrun with torchrun (or unset WORLD_SIZE)."
        )
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    stop_with_launcher()
    backend = "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
    if backend == "nccl":
        if local >= torch.cuda.device_count():
            raise FedrunError(
                f"LOCAL_RANK={local} has no GPU of its own ({torch.cuda.device_count()} visible): start at most one rank per GPU (--nproc-per-node)."
            )
        torch.cuda.set_device(local)
    try:
        dist.init_process_group(backend, rank=rank, world_size=size, timeout=datetime.timedelta(seconds=timeout_s()))
    except Exception as err:  # noqa: BLE001 - rendezvous failures: one sentence
        raise FedrunError(
            f"rank {rank} of {size} could not join the other ranks at {os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} "
            f"({type(err).__name__}): start every rank with the same torchrun command."
        ) from None
    _CURRENT = Ranks(rank, size, local, backend)
    return _CURRENT


def stop_with_launcher() -> None:
    """Get SIGTERM when the process that started this rank dies (``prctl(PR_SET_PDEATHSIG)``, Linux):
    a launcher killed with SIGKILL, its process group too, leaves no orphaned ranks training to the
    end; SIGTERM stops a rank as a scheduler's would (after the round, with a common checkpoint).
    Elsewhere a no-op."""
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, int(signal.SIGTERM), 0, 0, 0) != 0:  # 1 = PR_SET_PDEATHSIG
            return
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the launcher died before the prctl: stop now
        os.kill(os.getpid(), signal.SIGTERM)


def teardown() -> None:
    """Leave the process group (no-op when not in one)."""
    global _CURRENT
    if _CURRENT is not None and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - peers already gone: nothing left to release
            pass
    _CURRENT = None


def set_round(round_idx: int) -> None:
    global _ROUND
    _ROUND = round_idx


class PeerLost(FedrunError):
    """A collective failed: another rank died, was killed or stopped answering."""


class RankFailed(FedrunError):
    """Another rank stopped with an error of its own; its sentence is in the message."""


def _call(ranks: Ranks, op: Callable[[], Any]) -> Any:
    """Run the collective ``op``; a failure (peer gone, timeout) becomes one sentence."""
    try:
        return op()
    except FedrunError:
        raise
    except Exception as err:  # noqa: BLE001 - gloo/NCCL report a lost peer in several exception types
        where = f" in round {_ROUND}" if _ROUND else ""
        raise PeerLost(
            f"rank {ranks.rank} of {ranks.size} lost contact with the other ranks{where} ({type(err).__name__}: "
            "another rank failed, was killed or timed out; its own message, if any, is above): "
            "rerun the same torchrun command to resume from the last checkpoint."
        ) from None


def gather_rows(ranks: Ranks, rows: torch.Tensor, clients: torch.Tensor) -> torch.Tensor:
    """Collective: the ``[A, ...]`` rows of all ``clients`` in their order, from each rank's rows of the
    clients it owns (``rows[i]`` belongs to ``clients[ranks.owned(clients)][i]``). Exact: rows are moved,
    never summed."""
    owner = ranks.owner(clients.cpu())
    counts = torch.bincount(owner, minlength=ranks.size)
    most = int(counts.max()) if len(counts) else 0
    shape = tuple(rows.shape[1:])
    padded = torch.zeros((most, *shape), dtype=rows.dtype, device=ranks.comm)
    padded[: len(rows)] = rows.to(ranks.comm)
    parts = [torch.empty_like(padded) for _ in range(ranks.size)]
    _call(ranks, lambda: dist.all_gather(parts, padded))
    full = torch.empty((len(clients), *shape), dtype=rows.dtype, device=rows.device)
    for r in range(ranks.size):
        full[owner == r] = parts[r][: int(counts[r])].to(rows.device)
    return full


def flag_max(ranks: Ranks, value: int) -> int:
    """Collective: the largest ``value`` over all ranks."""
    t = torch.tensor([int(value)], dtype=torch.long, device=ranks.comm)
    _call(ranks, lambda: dist.all_reduce(t, op=dist.ReduceOp.MAX))
    return int(t.item())


def barrier(ranks: Ranks) -> None:
    flag_max(ranks, 0)  # an all-reduce: same ordering guarantee as a barrier, and works on every backend


def broadcast(ranks: Ranks, value: Any) -> Any:
    """Collective: rank 0's ``value`` (a picklable object) on every rank."""
    box = [value if ranks.writer else None]
    _call(ranks, lambda: dist.broadcast_object_list(box, src=0, device=ranks.comm))
    return box[0]


def agree(ranks: Ranks, error: Optional[BaseException]) -> None:
    """Collective: raise on every rank when any rank had an ``error`` (this rank's own, or
    :class:`RankFailed` naming the first failed rank and its sentence)."""
    if not flag_max(ranks, 0 if error is None else 1):
        return
    messages: list[Any] = [None] * ranks.size
    mine = None if error is None else (type(error).__name__, str(error))
    _call(ranks, lambda: dist.all_gather_object(messages, mine))
    if error is not None:
        raise error
    first = next(r for r, m in enumerate(messages) if m is not None)
    kind, text = messages[first]
    sentence = text if kind in ("FedrunError", "DivergenceError") or "FedrunError" in kind else f"{kind}: {text}"
    raise RankFailed(f"rank {first} of {ranks.size} stopped in round {_ROUND}: {sentence}")


def share_precheck(ranks: Ranks, precheck: Callable[[list[str]], Any], argv: list[str]) -> Any:
    """Rank 0 checks the command line (``precheck``, which also names the run dir) and every rank gets its answer.

    Returns rank 0's ``Prepared`` (with ``hydra.run.dir`` set by ``precheck``, so a timestamped dir is
    the same on every rank) and, on ranks > 0, ``hydra.output_subdir=null`` (only rank 0 writes ``.hydra/``).
    Rank 0 raises its own exception (a one-sentence error, "already finished"); the other ranks
    leave quietly with the same exit code, so the sentence is printed once.
    """
    answer: Any = None
    error: Optional[BaseException] = None
    if ranks.writer:
        try:
            answer = ("ok", precheck(argv))
        except FedrunError as err:
            error, answer = err, ("exit", getattr(err, "exit_code", 2))
        except Exception as err:  # noqa: BLE001 - e.g. RunFinished: rank 0 reports it
            error, answer = err, ("exit", 0)
    answer = broadcast(ranks, answer)
    if error is not None:
        raise error
    if answer[0] == "exit":
        # torchrun stops every rank once one exits: leave rank 0 the moment to print its sentence first
        time.sleep(2.0)
        raise SystemExit(answer[1])
    prepared = answer[1]
    if not ranks.writer:
        prepared.argv = [*prepared.argv, "hydra.output_subdir=null"]
    return prepared
