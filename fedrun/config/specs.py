"""The typed, frozen view of a run's config that the modules are handed.

:func:`read` is the one place that reads a composed config (the runner's ``build`` and the CLI call
it): it validates the values and returns a :class:`RunSpec` whose parts go to the modules that need
them (local training to the engine, sampling to the round loop, evaluation, the guard, checkpoints,
the run dir's resume decision, numerics, client-state placement). The group nodes (data, partition,
model, algo, engine) stay config nodes: their own schemas check them and ``build`` instantiates them.

:data:`fedrun.config.schema.NOT_RESULT_KEYS` is the one list of keys that do not change a run's result: a run dir may be
resumed with other values of them, the report does not tell runs apart by them, and Hydra leaves
them out of a sweep's run-dir names (``conf/config.yaml`` interpolates the list as
``${fedrun_not_result_keys:}``, a resolver :func:`fedrun.config.schema.register_configs` registers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from fedrun.config.checks import GROUPS, check_held_out, option_of, validate
from fedrun.config.schema import LOWERABLE, choice, logger_names
from fedrun.errors import FedrunError


@dataclass(frozen=True)
class LocalTraining:
    lr: float
    epochs: int
    batch_size: int
    weight_decay: float
    clip_norm: float  # <= 0 disables clipping
    bf16: bool = False  # the model's forward (and its backward) under bfloat16 autocast (precision=bf16)

    def autocast(self, device: Any) -> Any:
        """The autocast context of the model's forward: bfloat16 when ``bf16``, else a no-op.

        Parameters, gradients, the algorithm's extra terms and the SGD update stay float32 (mixed
        precision); autocast runs matmuls and convolutions in bfloat16 and keeps losses in float32.
        """
        import torch  # the specs stay torch-free (fast --help)

        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=self.bf16)


@dataclass(frozen=True)
class ClientEvalSpec:
    """Per-client evaluation settings (read from the config by :func:`fedrun.config.specs.read`)."""

    test_fraction: float = 0.0  # client_test_fraction: each client's own held-out test split
    val_fraction: float = 0.0  # val_fraction: the validation split (from every client's data)
    finetune_steps: int = 0  # personalised accuracy after this many local SGD steps (0 = off)
    lr: float = 0.1  # the fine-tuning steps' learning rate (the run's lr)
    batch_size: int = 10  # and batch size (the run's)
    seed: int = 0  # fine-tuning's shuffles (training)
    split_seed: Optional[int] = None  # the held-out splits (the run's partition seed; None: seed)
    split: str = "loop"  # how they are drawn: loop (a randperm per client) | vectorized (all at once; data.generator=vectorized)

    def __post_init__(self) -> None:
        check_held_out(self.test_fraction, self.val_fraction)
        if self.split not in ("loop", "vectorized"):
            raise FedrunError(f"ClientEvalSpec.split={self.split!r} is unknown: use 'loop' or 'vectorized'.")


@dataclass(frozen=True)
class Sampling:
    """Which clients take part in each round (:mod:`fedrun.simulation.sampling`)."""

    kind: str  # bernoulli | fixed
    participation: float
    seed: int



@dataclass(frozen=True)
class Schedule:
    """The local learning rate of each round ``r`` = 1..rounds (``lr_schedule=``):

    - ``exponential`` (the default): ``lr * lr_decay^(r - 1)``;
    - ``multistep``: ``lr * lr_factor^k``, k the number of milestones passed, where milestone ``f``
      (a fraction of the rounds) is passed from the 0-based round ``int(f * rounds)`` on: the FedNova
      authors' ``update_learning_rate`` (JYWa/FedNova ``train_LocalSGD.py``: lr/10 from round
      ``int(R/2)``, lr/100 from ``int(0.75 R)``, 0-based) is ``lr_milestones=[0.5,0.75] lr_factor=0.1``;
    - ``cosine``: ``lr * (1 + cos(pi (r - 1) / rounds)) / 2``, torch's ``CosineAnnealingLR`` with
      ``T_max=rounds`` stepped once a round (round 1 at ``lr``, decaying towards 0).
    """

    lr: float
    decay: float
    kind: str = "exponential"  # exponential | multistep | cosine
    rounds: int = 1
    milestones: tuple[float, ...] = ()
    factor: float = 0.1

    def lr_at(self, round_idx: int) -> float:
        if self.kind == "multistep":
            passed = sum(1 for f in self.milestones if round_idx - 1 >= int(f * self.rounds))
            return self.lr * self.factor ** passed
        if self.kind == "cosine":
            import math

            return self.lr * (1 + math.cos(math.pi * (round_idx - 1) / self.rounds)) / 2
        return self.lr * self.decay ** (round_idx - 1)


@dataclass(frozen=True)
class Evaluation:
    every: int  # a metrics row every this many rounds, and at the last
    active: bool  # also the mean of the active clients' models
    all: bool  # also the mean of every client's latest model
    all_every: int = 1  # ... in the rows of rounds divisible by this, and the last (eval_all_every)

    def due(self, round_idx: int, rounds: int) -> bool:
        return round_idx % self.every == 0 or round_idx == rounds

    def all_due(self, round_idx: int, rounds: int) -> bool:
        return self.all and (round_idx % self.all_every == 0 or round_idx == rounds)


@dataclass(frozen=True)
class GuardSpec:
    """What the divergence guard checks and the advice it gives (:mod:`fedrun.simulation.guard`)."""

    on_nonfinite: str  # stop | drop
    divergence_factor: float  # 0: off
    algo: str  # the algorithm's class name, for messages
    lr: float
    lowerable: tuple[tuple[str, float], ...] = ()  # (algo key, value) to suggest lowering

    def advice(self) -> str:
        """``lower lr=0.1 (or algo.alpha=0.01)``: the knobs of this run to turn down."""
        knobs = [f"algo.{k}={v}" for k, v in self.lowerable]
        return f"lower lr={self.lr}" + (f" (or {', '.join(knobs)})" if knobs else "")


@dataclass(frozen=True)
class CheckpointSpec:
    every: int  # rounds between periodic checkpoints; 0: only on SIGINT/SIGTERM

    def due(self, round_idx: int, rounds: int) -> bool:
        return bool(self.every) and round_idx % self.every == 0 and round_idx < rounds


@dataclass(frozen=True)
class ResumeSpec:
    """What a run does with a run dir that already holds something (:mod:`fedrun.rundir.resume`)."""

    mode: str  # auto | true | false
    skip_finished: bool
    config: dict[str, Any] = field(default_factory=dict, compare=False)  # the run's resolved config


@dataclass(frozen=True)
class Numerics:
    deterministic: bool
    precision: str  # fp32 | tf32 | bf16


@dataclass(frozen=True)
class PlacementSpec:
    """Inputs of the client-state placement decision (:func:`fedrun.state.store.store_for_run`)."""

    requested: str  # auto | device | pinned | mmap
    participation: float
    batch_size: int


@dataclass(frozen=True)
class RunSpec:
    seed: int
    num_clients: int
    rounds: int
    device: str  # auto | cpu | cuda
    progress: Optional[bool]
    local: LocalTraining  # at round 1's lr (see ``schedule``)
    schedule: Schedule
    sampling: Sampling
    evaluation: Evaluation
    guard: GuardSpec
    checkpoint: CheckpointSpec
    resume: ResumeSpec
    numerics: Numerics
    placement: PlacementSpec
    groups: dict[str, DictConfig] = field(compare=False)  # data, partition, model, algo, engine, hetero nodes
    options: dict[str, str] = field(compare=False)  # the chosen option of each group (``model``: ``mlp``), for sentences
    config: dict[str, Any] = field(compare=False)  # resolved, for summary.json and checkpoints
    client_eval: Optional[ClientEvalSpec] = None  # each client's held-out split, validation, fine-tuning
    loggers: tuple[str, ...] = ()  # experiment trackers (logger=)
    threads: Optional[int] = None  # torch threads; None: chosen by model size (fedrun/simulation/threads.py)
    quiet: bool = False  # no per-round lines (sweeps)
    keep_checkpoint: bool = False  # a finished run keeps its final checkpoint, to be continued with more rounds
    data_seed: Optional[int] = None  # the dataset's seed (None: ``seed``); see :meth:`seeds`
    partition_seed: Optional[int] = None  # the partition's and held-out splits' seed (None: ``seed``)

    def seeds(self) -> tuple[int, int]:
        """(data seed, partition seed): ``data_seed`` and ``partition_seed``, each ``seed`` when not set,
        so a run that sets neither draws exactly what it drew before they existed; ``seed`` alone
        seeds the model init, the client sampling, the local shuffles and augmentation."""
        pick = lambda s: self.seed if s is None else s  # noqa: E731
        return pick(self.data_seed), pick(self.partition_seed)

    def title(self) -> str:
        """The plot title's settings part."""
        part = str(self.groups["partition"]["_target_"]).rsplit(".", 1)[-1]
        return (
            f"({part}), {self.num_clients} clients, participation {self.sampling.participation}, "
            f"E={self.local.epochs}, B={self.local.batch_size}, lr={self.schedule.lr}, seed={self.seed}"
        )


def resolved(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain data (``hydra`` node left out)."""
    if "hydra" in cfg:
        cfg = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"])
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


def read_resume(cfg: DictConfig) -> ResumeSpec:
    """The run-dir part alone (the CLI needs it before a run starts; cheap: no torch)."""
    return ResumeSpec(str(cfg.get("resume", "auto")).lower(), bool(cfg.get("skip_finished", False)), resolved(cfg))


def read(cfg: DictConfig) -> RunSpec:
    """Validate ``cfg`` and turn it into a :class:`RunSpec`."""
    validate(cfg)
    precision = choice(cfg.precision)
    algo = cfg.algo
    lowerable = tuple((k, algo[k]) for k in LOWERABLE if k in algo and isinstance(algo[k], (int, float)))
    return RunSpec(
        seed=int(cfg.seed),
        num_clients=int(cfg.num_clients),
        rounds=int(cfg.rounds),
        device=choice(cfg.device),
        progress=cfg.progress,
        local=LocalTraining(
            float(cfg.lr), int(cfg.local_epochs), int(cfg.batch_size), float(cfg.weight_decay), float(cfg.clip_norm),
            bf16=precision == "bf16",
        ),
        schedule=Schedule(float(cfg.lr), float(cfg.lr_decay), choice(cfg.get("lr_schedule", "exponential")), int(cfg.rounds),
                          tuple(float(f) for f in cfg.get("lr_milestones", ())), float(cfg.get("lr_factor", 0.1))),
        sampling=Sampling(choice(cfg.sampling), float(cfg.participation), int(cfg.seed)),
        evaluation=Evaluation(int(cfg.eval_every), bool(cfg.eval_active), bool(cfg.eval_all), int(cfg.get("eval_all_every", 1))),
        guard=GuardSpec(
            choice(cfg.on_nonfinite), float(cfg.divergence_factor or 0.0), str(algo._target_).rsplit(".", 1)[-1],
            float(cfg.lr), lowerable,
        ),
        checkpoint=CheckpointSpec(int(cfg.checkpoint_every or 0)),
        resume=read_resume(cfg),
        numerics=Numerics(bool(cfg.deterministic), precision),
        placement=PlacementSpec(choice(cfg.state_placement), float(cfg.participation), int(cfg.batch_size)),
        groups={g: cfg[g] for g in GROUPS},
        options={g: option_of(cfg, g) for g in GROUPS},
        config=resolved(cfg),
        client_eval=read_client_eval(cfg),
        loggers=tuple(logger_names(cfg.get("logger"))),
        threads=None if cfg.get("threads") is None else int(cfg.threads),
        quiet=bool(cfg.get("quiet", False)),
        keep_checkpoint=bool(cfg.get("keep_checkpoint", False)),
        data_seed=None if cfg.get("data_seed") is None else int(cfg.data_seed),
        partition_seed=None if cfg.get("partition_seed") is None else int(cfg.partition_seed),
    )


def read_client_eval(cfg: DictConfig) -> ClientEvalSpec:
    """The per-client evaluation settings (fractions checked: one sentence when out of range)."""
    return ClientEvalSpec(
        float(cfg.get("client_test_fraction", 0.0)), float(cfg.get("val_fraction", 0.0)),
        int(cfg.get("finetune_steps", 0)), float(cfg.lr), int(cfg.batch_size), int(cfg.seed),
        split_seed=int(cfg.seed if cfg.get("partition_seed") is None else cfg.partition_seed),
        # the vectorised data generator's runs draw the held-out splits vectorised too; every other setting keeps the loop
        split="vectorized" if _data_generator(cfg) == "vectorized" else "loop",
    )


def _data_generator(cfg: DictConfig) -> Optional[str]:
    """``data.generator`` when the data group has one (the synthetic data), else None."""
    data = cfg.get("data")
    return None if data is None or not hasattr(data, "get") else data.get("generator")
