"""The CUDA paths on a fake CUDA device (tests/fake_cuda.py): run here, on a CPU-only machine.

Data, partition, model parameters, client state and the server model sit on a fake ``cuda`` device;
CPU-side code (batch schedules, augmentation draws, step counts) runs for real. Each test runs the
steps of :func:`fedrun.simulation.round.run_round` between its host reads: the store's gather of the active
rows, the algorithm's local objective, one ``train`` call of each engine (every algorithm, SAM
hooks of FedSpeed/FedSMOO included; every model: logreg and mlp through the explicit chain, cnn as
one grouped convolution over all clients as on a GPU, resnet18_gn through its stacked forward, lstm
through the sequential fallback and through vmap), the client and server updates, the store's scatter
of the new rows, the mean of all models and the evaluation's device-side sums. A CPU tensor (not
zero-dimensional) meeting a CUDA one raises, as on a GPU, and so does a CPU generator for a CUDA
random op: the tests below prove both with injected faults.

Not covered without a GPU (scripts/gpu_check.sh, issue 25 Part B):

- numbers: fake tensors compute nothing, so every value on the device (losses, accuracies, the
  divergence guard's checks, the vectorised engine's agreement check of its stacked forward) is
  unchecked here; the numerics of tf32 and bf16 autocast on CUDA kernels (cuDNN's grouped
  convolutions), ``deterministic=true`` on CUDA;
- the host reads themselves (``float(loss)``, ``bool(isfinite)``, ``.tolist()``): where they sit and
  how many per round (one per evaluation, the guard's two per round) is only visible on a GPU;
- pinned host memory (``state_placement=pinned``: with no CUDA the tables are plain host memory),
  asynchronous copies and ``non_blocking`` transfers;
- ``engine.compile=true`` (inductor kernels, CUDA graphs of ``mode="reduce-overhead"``);
- ``torch.cuda.mem_get_info`` and the chunk sizes derived from it (a fixed 80 GiB here);
- NCCL ranks (``torchrun`` with one GPU per rank);
- speed: the GPU bench (scripts/bench.py) and its targets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch
import yaml
from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensor, FakeTensorDeviceMismatchError

from fedrun.algorithms.base import FedContext
from fedrun.config.schema import CONF_DIR
from fedrun.config.specs import LocalTraining
from fedrun.data import FederatedData
from fedrun.data.augment import FlipCrop
from fedrun.engines.sequential import SequentialEngine
from fedrun.engines.stacked import LayerChain
from fedrun.engines.vectorized import VectorizedEngine
from fedrun.models import CNN, MLP, CharLSTM, LogisticRegression, ResNet18GN
from fedrun.models.params import FlatModel
from fedrun.simulation import evaluation, rounds
from fedrun.simulation.all_models import AllModelsMean
from fedrun.state.store import MmapStore, TensorStore
from fake_cuda import CUDA, FakeCuda  # tests/fake_cuda.py

pytestmark = pytest.mark.filterwarnings("ignore:Accessing the data pointer of FakeTensor")  # nn.LSTM's weight check

SIZES = [5, 10, 9, 5]  # samples per client: uneven step counts, so the vectorised engine masks a step
ACTIVE = [0, 1, 3]  # the round's active clients: 1, 2 and 1 local steps of B=5
HP = LocalTraining(lr=0.1, epochs=1, batch_size=5, weight_decay=1e-3, clip_norm=10.0)


def algorithms() -> dict[str, object]:
    """Every algorithm of conf/algo/ that names its class (variants of another's values left out),
    with its configured values."""
    import importlib

    out = {}
    for path in sorted(Path(CONF_DIR, "algo").glob("*.yaml")):
        node = yaml.safe_load(path.read_text())
        if "_target_" not in node:
            continue
        module, name = node["_target_"].rsplit(".", 1)
        values = {k: v for k, v in node.items() if k not in ("_target_", "defaults")}
        out[path.stem] = getattr(importlib.import_module(module), name)(**values)
    return out


ALGORITHMS = algorithms()


@dataclass
class Setup:
    data: FederatedData
    partition: list[torch.Tensor]
    model: FlatModel
    theta: torch.Tensor


def make_setup(fake: FakeCuda, module: torch.nn.Module, x: torch.Tensor, classes: int, augment=None) -> Setup:
    """Real CPU tensors moved onto the fake device as fedrun.simulation.build.build moves them."""
    g = torch.Generator().manual_seed(0)
    n = sum(SIZES)
    y = torch.randint(0, classes, (n,), generator=g)
    order = torch.randperm(n, generator=g)
    partition = list(order.split(SIZES))
    data = FederatedData("fake", x, y, x[:5].clone(), y[:5].clone(), classes, augment=augment)  # batches of 5 only: fewer shapes
    with fake:
        data = data.to(CUDA)
        partition = [p.to(CUDA) for p in partition]
        model = FlatModel(module).to(CUDA)
        theta = model.initial_vector().to(CUDA)
    return Setup(data, partition, model, theta)


@pytest.fixture(scope="module")
def fake() -> FakeCuda:
    return FakeCuda()


class Setups(dict):
    """Each model's setup, made on first use (a test module run with -k, or an xdist worker, builds
    only the models its tests use)."""

    def __init__(self, fake: FakeCuda):
        super().__init__()
        self.fake = fake

    def __missing__(self, name: str) -> Setup:
        torch.manual_seed(0)
        n, g = sum(SIZES), torch.Generator().manual_seed(1)
        images = lambda: torch.randn(n, 3, 32, 32, generator=g)  # noqa: E731
        made = {
            "logreg": lambda: make_setup(self.fake, LogisticRegression((30,), 5), torch.randn(n, 30, generator=g), 5),
            "mlp": lambda: make_setup(self.fake, MLP((1, 28, 28), 10), torch.randn(n, 1, 28, 28, generator=g), 10),
            "cnn": lambda: make_setup(self.fake, CNN((3, 32, 32), 10), images(), 10, augment=FlipCrop()),
            # width 16 instead of 64: the same layers, a sixteenth of the weights to initialise on the CPU
            "resnet18_gn": lambda: make_setup(self.fake, ResNet18GN((3, 32, 32), 10, width=16), images(), 10, augment=FlipCrop()),
            "lstm": lambda: make_setup(self.fake, CharLSTM((5,), 80), torch.randint(0, 80, (n, 5), generator=g), 80),
        }[name]()
        self[name] = made
        return made


@pytest.fixture(scope="module")
def setups(fake: FakeCuda) -> Setups:
    return Setups(fake)


ENGINES = {"sequential": SequentialEngine, "vectorized": VectorizedEngine}


@pytest.fixture(scope="module")
def engines() -> dict:
    """One engine of each kind for the module: the vectorised engine's choice of forward per model
    (and its check against the module) is made once."""
    return {name: make() for name, make in ENGINES.items()}


def on_cuda(t: torch.Tensor) -> bool:
    return isinstance(t, FakeTensor) and t.device.type == "cuda"


def one_round(fake: FakeCuda, s: Setup, algorithm, engine, store=None, hp: LocalTraining = HP) -> dict:
    """run_round's device work for the clients ACTIVE, with their ids on the CPU as the runner samples them."""
    m, p = len(SIZES), s.model.num_params
    with fake:
        ctx = FedContext(m, p, torch.tensor(SIZES), HP.batch_size, HP.epochs, CUDA)
        store = store or TensorStore(m, p, CUDA)
        rounds.add_tables(algorithm, store)
        const = algorithm.setup(ctx)
        server = algorithm.initial_server(s.theta, const)
        all_models = AllModelsMean(store, s.theta, algorithm.all_weights(ctx))
        clients = torch.tensor(ACTIVE)
        rnd = rounds.open_round(algorithm, ctx, const, store, 1, hp.lr, hp.lr, s.theta, clients.to(CUDA))
        objective = algorithm.local_objective(rnd, server)
        result = engine.train(s.model, s.theta, s.data, s.partition, clients, objective, hp, 0, 1)
        rnd = rnd.finished(clients, result.steps, objective.hook.result() if objective.hook else {})
        new_rows = algorithm.client_update(rnd, server, result.thetas)
        theta, server = algorithm.server_update(rnd, server, result.thetas, new_rows)
        rounds.write_rows(store, rnd, new_rows)
        all_models.update(clients, result.thetas)
        active_model = algorithm.average(result.thetas, rnd.sizes)
        sums = [evaluation.totals(s.model, t, s.data.x_test, s.data.y_test) for t in (theta, active_model, all_models.mean)]
        read_back = {name: store.get(name, clients) for name in algorithm.client_states}
    return dict(result=result, rows=new_rows, theta=theta, server=server, sums=sums, read_back=read_back, store=store)


def check_round(out: dict, p: int, algorithm) -> None:
    a = len(ACTIVE)
    r = out["result"]
    assert on_cuda(r.thetas) and r.thetas.shape == (a, p)
    assert on_cuda(r.loss) and r.loss.shape == (a,)
    steps = [math.ceil(SIZES[c] / HP.batch_size) for c in ACTIVE]  # E=1 pass of ceil(n_k / B) steps
    if type(algorithm).__name__.startswith("Scaffold"):  # K = E * ceil(N / (m B)) for every client
        steps = [HP.epochs * -(-sum(SIZES) // (len(SIZES) * HP.batch_size))] * a
    assert r.steps.device.type == "cpu" and r.steps.tolist() == steps
    assert set(out["rows"]) == set(algorithm.client_states)
    for name, rows in out["rows"].items():
        assert on_cuda(rows) and rows.shape == (a, p), name
        assert on_cuda(out["read_back"][name]) and out["read_back"][name].shape == (a, p), name
    assert on_cuda(out["theta"]) and out["theta"].shape == (p,)
    for name, value in out["server"].items():
        assert on_cuda(value) and value.shape == (p,), name
    for sums in out["sums"]:
        assert on_cuda(sums) and sums.shape == (2,) and sums.dtype == torch.float64


@pytest.mark.parametrize("engine", ["sequential", "vectorized"])
@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_every_algorithm_on_fake_cuda(fake, setups, engines, algo: str, engine: str) -> None:
    """Each algorithm on the logistic regression (the vectorised engine: the explicit chain,
    ``train_explicit`` without a hook; SAM hooks: two explicit gradients a step). The CNN's autograd
    path with and without a hook: test_every_model_on_fake_cuda."""
    s, algorithm = setups["logreg"], ALGORITHMS[algo]
    check_round(one_round(fake, s, algorithm, engines[engine]), s.model.num_params, algorithm)


@pytest.mark.parametrize(
    "model, engine, algos",
    [
        ("logreg", "sequential", ("fedavg",)),  # every algorithm: test_every_algorithm_on_fake_cuda
        ("logreg", "vectorized", ("fedavg",)),
        ("mlp", "sequential", ("fedavg", "fedsmoo")),
        ("mlp", "vectorized", ("fedavg", "fedsmoo")),  # the explicit chain with ReLUs; its gradient under a hook
        ("cnn", "sequential", ("fedsmoo",)),
        ("cnn", "vectorized", ("feddc", "fedsmoo")),  # autograd through the grouped convolution: linear + prox terms, a hook
        ("resnet18_gn", "vectorized", ("fedavg",)),  # its own stacked forward (the sequential engine is the same for every model)
        ("lstm", "sequential", ("fedavg",)),
        ("lstm", "vectorized", ("fedavg",)),  # handed to the sequential engine
    ],
)
def test_every_model_on_fake_cuda(fake, setups, engines, model: str, engine: str, algos: tuple) -> None:
    s = setups[model]
    for algo in algos:
        check_round(one_round(fake, s, ALGORITHMS[algo], engines[engine]), s.model.num_params, ALGORITHMS[algo])


def test_lstm_under_vmap_on_fake_cuda(fake, setups) -> None:
    """engine.gradient=vmap: the LSTM unrolled into matrix products over all clients at once."""
    s = setups["lstm"]
    check_round(one_round(fake, s, ALGORITHMS["fedavg"], VectorizedEngine(gradient="vmap")), s.model.num_params, ALGORITHMS["fedavg"])


def test_cnn_takes_the_gpus_grouped_convolution(fake, setups) -> None:
    """On a CUDA device the vectorised engine trains the CNN's clients at once, each convolution one
    grouped convolution with groups = the active clients (on a CPU: one client at a time, groups=1)."""
    s, engine = setups["cnn"], VectorizedEngine()
    fake.conv_groups.clear()
    one_round(fake, s, ALGORITHMS["fedavg"], engine)
    forward, _act, _model, serial = engine._cache[id(s.model)]
    assert isinstance(forward, LayerChain) and forward.has_conv and not serial
    with fake:
        assert engine.chunk_for(s.model, len(ACTIVE), HP.batch_size, CUDA) == len(ACTIVE)
    assert len(ACTIVE) in fake.conv_groups  # the training steps' convolutions
    assert set(fake.conv_groups) <= {1, 2, len(ACTIVE)}  # 1: the module itself, 2: the engine's check of its forward


@pytest.mark.parametrize("engine", ["sequential", "vectorized"])
@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_bf16_autocast_on_fake_cuda(fake, setups, engines, model: str, engine: str) -> None:
    """precision=bf16: the model's forward (the explicit chain's gradient, the grouped convolution)
    in bfloat16 under CUDA autocast, parameters and the update in float32."""
    s, algorithm = setups[model], ALGORITHMS["fedsmoo"]
    fake.product_dtypes.clear()
    out = one_round(fake, s, algorithm, engines[engine], hp=replace(HP, bf16=True))
    check_round(out, s.model.num_params, algorithm)
    assert out["result"].thetas.dtype == torch.float32 and out["rows"]["mu"].dtype == torch.float32
    assert torch.bfloat16 in fake.product_dtypes


def test_build_places_a_run_on_fake_cuda(fake, monkeypatch) -> None:
    """fedrun.simulation.build.build with device=cuda: data, partition, model, server model and state,
    client state (FedSMOO's two tables and eval_all's) on the device."""
    import fedrun.simulation.build as build
    from conftest import build as build_config, compose_config

    monkeypatch.setattr(build, "resolve_device", torch.device)  # torch sees no GPU
    cfg = compose_config("device=cuda", "data=synthetic", "model=mlp", "num_clients=6", "algo=fedsmoo", "eval_all=true")
    with fake:
        exp = build_config(cfg)
    d = exp.data
    for t in (d.x_train, d.y_train, d.x_test, d.y_test, exp.theta, *exp.partition, *exp.server.values(), exp.all_models.mean):
        assert on_cuda(t)
    assert all(on_cuda(p) for p in exp.model.module.parameters())
    assert type(exp.store) is TensorStore and sorted(exp.store.tables) == ["_latest_delta", "h", "mu"]
    assert all(on_cuda(t) for t in exp.store.tables.values())
    assert exp.ctx.client_sizes.device.type == "cpu" and not isinstance(exp.ctx.client_sizes, FakeTensor)


def test_client_evaluation_on_fake_cuda(fake, setups, tmp_path) -> None:
    """Per-client evaluation with fine-tuning (client_test_fraction, finetune_steps): the held-out
    indices (made on the CPU before the partition moves) go to the device, every client's sums stay there."""
    from types import SimpleNamespace

    from fedrun.config.specs import ClientEvalSpec
    from fedrun.observers.client_eval import ClientEvaluator
    from fedrun.simulation.client_eval import client_sums, split_partition

    s = setups["cnn"]
    cpu_partition = [p.cpu() for p in torch.arange(sum(SIZES)).split(SIZES)]
    train, held = split_partition(cpu_partition, 0.4, 0.0, torch.Generator().manual_seed(0))
    with_test = sum(1 for t in held.tests if len(t))
    spec = ClientEvalSpec(test_fraction=0.4, finetune_steps=2, lr=0.1, batch_size=2)
    with fake:
        exp = SimpleNamespace(data=s.data, model=s.model, partition=[t.to(CUDA) for t in train])
        evaluator = ClientEvaluator(spec, exp, held, tmp_path)
        sums = client_sums(spec, exp, evaluator.held, 1, s.theta)
    assert all(on_cuda(t) for t in evaluator.held.tests)
    assert on_cuda(sums) and sums.shape == (with_test, 3) and sums.dtype == torch.float64


@pytest.mark.parametrize("placement", ["device", "pinned", "mmap"])
def test_state_placements_gather_and_scatter_on_fake_cuda(fake, setups, placement: str) -> None:
    """FedDyn's rows through each store: tables on the device or in host memory (pinned needs CUDA:
    plain host memory here; mmap: files), the active rows gathered onto the device and written back."""
    s = setups["mlp"]
    m, p = len(SIZES), s.model.num_params
    with fake:
        store = MmapStore(m, p, CUDA) if placement == "mmap" else TensorStore(m, p, CUDA, pinned=placement == "pinned")
    out = one_round(fake, s, ALGORITHMS["feddyn"], VectorizedEngine(), store)
    table = out["store"].tables["s"]
    assert table.device.type == ("cuda" if placement == "device" else "cpu")
    check_round(out, p, ALGORITHMS["feddyn"])


def test_fake_device_raises_on_cpu_cuda_mixes(fake) -> None:
    """The mixes torch refuses on a GPU raise here; what it accepts (CPU indices into a CUDA tensor,
    a zero-dimensional CPU tensor, copies between devices) runs; CPU work stays real."""
    g = torch.Generator().manual_seed(0)
    with fake:
        index = torch.zeros(3, 8, dtype=torch.long, device=CUDA)
        local = torch.randint(0, 8, (3, 4), generator=g)  # a CPU index, as Plan.build draws it
        with pytest.raises(FakeTensorDeviceMismatchError):
            torch.gather(index, 1, local)  # Plan.build without its .to(device)
        assert on_cuda(torch.gather(index, 1, local.to(CUDA)))
        w = torch.zeros(3, 5, device=CUDA)
        with pytest.raises(FakeTensorDeviceMismatchError):
            torch.where(torch.ones(3, 1, dtype=torch.bool), w, w)  # a CPU mask of active clients
        with pytest.raises(FakeTensorDeviceMismatchError):
            w * torch.ones(3, 1)  # a CPU [A, 1] weight decay
        with pytest.raises(RuntimeError, match="generator"):
            torch.randperm(8, generator=g, device=CUDA)  # a CPU generator for a CUDA draw
        with pytest.raises(RuntimeError, match="generator"):
            torch.rand(8, device=CUDA)  # CUDA's global stream
        assert on_cuda(w[torch.tensor([0, 2])]) and on_cuda(w * torch.tensor(2.0))  # legal on a GPU too
        assert torch.randperm(8, generator=torch.Generator().manual_seed(0)).tolist() == torch.randperm(
            8, generator=torch.Generator().manual_seed(0)).tolist()  # CPU: real values
        assert not isinstance(local, FakeTensor)
        with pytest.raises(DataDependentOutputException):
            float(w.sum())  # a host read of a device value: a synchronisation on a GPU
        v = torch.zeros(5, device=CUDA, requires_grad=True)
        (grad,) = torch.autograd.grad((w @ v).sum(), v)  # autograd: the graph checked, the gradient fake
        assert on_cuda(grad) and grad.shape == v.shape
        with pytest.raises(RuntimeError, match="not in the graph"):
            torch.autograd.grad((w @ v).sum(), torch.zeros(5, device=CUDA, requires_grad=True))


@pytest.mark.parametrize("engine", ["sequential", "vectorized"])
def test_injected_cpu_decay_is_caught(fake, setups, monkeypatch, engine: str) -> None:
    """A CPU tensor where the engines build one on the device (the [A, 1] weight decay) raises."""
    import fedrun.engines.sequential as sequential
    import fedrun.engines.vectorized as vectorized

    def cpu_decay(objective, hp, count, device):  # noqa: ANN001 - total_decay with the device forgotten
        return torch.full((count, 1), hp.weight_decay)

    monkeypatch.setattr(sequential, "total_decay", cpu_decay)
    monkeypatch.setattr(vectorized, "total_decay", cpu_decay)
    with pytest.raises(FakeTensorDeviceMismatchError):
        one_round(fake, setups["mlp"], ALGORITHMS["fedavg"], ENGINES[engine]())


@pytest.mark.parametrize("engine", ["sequential", "vectorized"])
def test_injected_cpu_generator_is_caught(fake, setups, engine: str) -> None:
    """An augmentation that draws on the batch's device with the client's CPU generator raises."""

    class DrawsOnCuda(FlipCrop):
        def draw(self, n, g):  # noqa: ANN001
            return torch.rand(n, generator=g, device=CUDA) < 0.5, torch.full((n, 2), self.pad, device=CUDA)

    s = setups["cnn"]
    bad = Setup(FederatedData(**{**s.data.__dict__, "augment": DrawsOnCuda()}), s.partition, s.model, s.theta)
    with pytest.raises(RuntimeError, match="generator"):
        one_round(fake, bad, ALGORITHMS["fedavg"], ENGINES[engine]())
