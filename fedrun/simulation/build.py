"""A run's objects from its spec: data, partition, model, algorithm, engine and client state.

:func:`build` reads nothing but the :class:`~fedrun.config.specs.RunSpec` (and instantiates its group
nodes); the run dir decides, before the build, where durable client state lives and whether a
checkpoint's placement is kept (``state_dir``, ``placement``, ``reuse_files``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from fedrun import distributed
from fedrun.algorithms.base import Algorithm, FedContext, ServerState
from fedrun.config.schema import build_object
from fedrun.config.specs import RunSpec
from fedrun.data import FederatedData
from fedrun.data.partition import check_partition
from fedrun.distributed import sharded
from fedrun.engines.base import Engine
from fedrun.errors import FedrunError
from fedrun.models.fit import build_model
from fedrun.models.params import FlatModel
from fedrun.seeding import derive_seed, generator
from fedrun.simulation import client_eval, rounds
from fedrun.simulation.all_models import AllModelsMean
from fedrun.state.memory import check_data_fits
from fedrun.state.store import ClientStateStore, store_for_run


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise FedrunError("device=cuda was asked for but torch sees no CUDA GPU: use device=auto or device=cpu.")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class Experiment:
    """Everything a run needs, built from its spec."""

    spec: RunSpec
    device: torch.device
    data: FederatedData
    partition: list[torch.Tensor]
    model: FlatModel
    theta: torch.Tensor
    algorithm: Algorithm
    engine: Engine
    store: ClientStateStore
    ctx: FedContext
    server: ServerState
    const: Any = None  # what algorithm.setup returned
    all_models: Optional[AllModelsMean] = None  # the evaluated mean of every client's latest model (eval_all)
    held_out: Optional[client_eval.HeldOut] = None  # each client's own test split and the validation split


def build(spec: RunSpec, state_dir: Optional[Path] = None, placement: Optional[str] = None,
          reuse_files: bool = False) -> Experiment:
    """Build data, partition, model, algorithm, engine and state for ``spec``.

    ``state_dir``: where durable memory-mapped client state lives (none: scratch files).
    ``placement``: the client-state placement to use instead of ``spec.placement.requested`` (a
    resumed run keeps its checkpoint's); ``reuse_files``: take over the state files already there.
    """
    device = resolve_device(spec.device)
    m, seed, groups = spec.num_clients, spec.seed, spec.groups
    data_seed, partition_seed = spec.seeds()  # each `seed` unless data_seed / partition_seed fix it
    data: FederatedData = build_object(groups["data"], num_clients=m, seed=data_seed)
    partitioner = build_object(groups["partition"], _partial_=True)
    kwargs = {} if data.groups is None else {"groups": data.groups}
    partition = partitioner(data.y_train, m, generator(partition_seed, "partition"), **kwargs)
    check_partition(partition, len(data.y_train), m, str(groups["partition"]._target_))  # a custom partitioner's output too
    partition, held_out = client_eval.hold_out(spec.client_eval, partition)  # each client's own test / validation parts
    check_data_fits(data, device)  # one sentence instead of a CUDA out-of-memory traceback
    data = data.to(device)
    partition = [p.to(device) for p in partition]
    torch.manual_seed(derive_seed(seed, "model"))
    module = build_model(groups["model"], spec.options.get("model", "?"), data)  # one sentence when the model cannot take the data's inputs
    model = FlatModel(module).to(device)
    theta = model.initial_vector().to(device)
    algorithm: Algorithm = build_object(groups["algo"], _convert_="all")
    engine: Engine = build_object(groups["engine"], _convert_="all")
    sizes = torch.tensor([len(p) for p in partition], dtype=torch.long)
    ctx = FedContext(m, model.num_params, sizes, spec.local.batch_size, spec.local.epochs, device)
    ranks = distributed.current()  # several processes: this rank's rows of the state, its share of the training
    if ranks is None:
        p = spec.placement
        tables = len(algorithm.client_states) + int(spec.evaluation.all)
        store = store_for_run(placement or p.requested, m, p.participation, p.batch_size, tables, data, model, device,
                              state_dir, reuse_files)
    else:
        store, engine = sharded.store_for_rank(spec, data, model, algorithm, device, ranks), sharded.ShardedEngine(engine, ranks)
    const = algorithm.setup(ctx)
    rounds.add_tables(algorithm, store)
    server = algorithm.initial_server(theta, const)
    all_models = AllModelsMean(store, theta, algorithm.all_weights(ctx)) if spec.evaluation.all else None
    return Experiment(spec, device, data, partition, model, theta, algorithm, engine, store, ctx, server, const, all_models, held_out)
