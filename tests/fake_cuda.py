"""A fake CUDA device for a CPU-only machine: CUDA tensors without values, CPU tensors real.

:class:`FakeCuda` is a dispatch mode over torch's fake tensors (``torch._subclasses.fake_tensor``).
An operation that meets a fake tensor, or that makes a tensor on a ``cuda`` device, runs under a
:class:`~torch._subclasses.fake_tensor.FakeTensorMode`: shapes, dtypes and devices are propagated,
nothing is computed, and tensors on two devices that torch would refuse to combine raise
``FakeTensorDeviceMismatchError`` (a CPU tensor that is not zero-dimensional meeting a CUDA one, as
torch's own CUDA kernels refuse it). Every other operation runs for real on the CPU, so host-side
code (batch schedules from CPU generators, ``int()`` of a CPU count, boolean masks of CPU tensors)
runs as it does beside a real GPU. Reading a fake CUDA value back to the host (``.item()``,
``float(t)``, ``bool(t)``, ``.tolist()``) raises ``DataDependentOutputException``: the places a real
GPU would synchronise.

Two checks fake tensors do not make on their own are added: a random op on the CUDA device given a
CPU ``torch.Generator`` raises (torch: "Expected a 'cuda' device type for generator"), and so does a
CUDA random op given none (it would draw from CUDA's global stream, whose state depends on everything
drawn before; fedrun draws each stream from its own generator, :func:`fedrun.seeding.generator`).

Autograd's engine cannot run on a fake CUDA device without a CUDA context, so while the mode is
entered ``torch.autograd.grad`` checks that every input is in the outputs' recorded graph
and returns fake gradients shaped and placed as the inputs (:func:`_graph_checked_grad`): the forward
passes and everything fedrun does with the gradients run on the fake device, autograd's backward
kernels do not. ``torch.allclose`` of fake tensors compares devices and shapes only (there are no values): the
vectorised engine's check of a stacked forward against the module itself
(:func:`fedrun.engines.stacked.agrees`) still runs both on the device.

While the mode is entered, ``torch.cuda._lazy_init`` is a no-op (factories on ``cuda`` would look for
a driver first), so is the device switch of ``torch.cuda.device_of`` (``nn.LSTM`` flattening its weights), :func:`fedrun.state.memory.free_bytes` reports :data:`FREE_BYTES` for a CUDA device
(``torch.cuda.mem_get_info`` needs a driver) and ``Module.to`` leaves a fake parameter already on the
device alone (:func:`_swap_unless_moved`). cuDNN is off: planning its kernels needs a driver, so the
fused ``nn.LSTM`` runs through torch's own CUDA LSTM kernels instead of ``_cudnn_rnn``.
``torch.autocast("cuda")`` stays on (:func:`_autocast_on_fake_cuda`), so ``precision=bf16`` runs its
bfloat16 kernels on the fake device.
"""

from __future__ import annotations

from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from fedrun.state import memory

FREE_BYTES = 80 * 2**30  # an 80 GiB GPU, for the engine's chunk sizing and the store's placement
CUDA = torch.device("cuda")


def _is_cuda(device: Any) -> bool:
    return device is not None and torch.device(device).type == "cuda"


class FakeCuda(TorchDispatchMode):
    """``with FakeCuda():`` tensors made on ``cuda`` or moved there (``t.to("cuda")``) are fake. Enter
    the same instance for every step of one test (fake tensors of two modes cannot meet)."""

    def __init__(self) -> None:
        super().__init__()
        self.fake = FakeTensorMode(allow_non_fake_inputs=True)
        self.conv_groups: list[int] = []  # the ``groups`` of each convolution on it
        self.product_dtypes: set[torch.dtype] = set()  # dtypes of the matrix products and convolutions on it

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        flat = _leaves_of(args, kwargs)
        device = kwargs.get("device")
        fake = next((t for t in flat if type(t) is FakeTensor), None)
        if fake is None and not _is_cuda(device):
            return func(*args, **kwargs)  # a CPU op: real
        target = torch.device(device) if device is not None else fake.device
        if func is torch.ops.aten.allclose.default:  # no values to compare: only that both ran and agree in shape
            return args[0].device == args[1].device and args[0].shape == args[1].shape
        if target.type == "cuda" and func.__name__.startswith(RANDOM_OPS):
            _check_generator(func.__name__, flat, target)
        if func is torch.ops.aten.convolution.default:
            self.conv_groups.append(args[8])
        if func in _PRODUCTS:
            self.product_dtypes.add(args[1].dtype)
        return self.fake.dispatch(func, types, args, kwargs)  # FakeTensorMode.__torch_dispatch__ without its mode switch

    def __enter__(self):
        self._saved = (torch.cuda._lazy_init, torch.cuda._exchange_device, torch.cuda._maybe_exchange_device,
                       memory.free_bytes, torch.utils.swap_tensors, torch.autograd.grad, torch.backends.cudnn.enabled,
                       torch.autocast.__init__)
        torch.backends.cudnn.enabled = False
        torch.autocast.__init__ = _autocast_on_fake_cuda(torch.autocast.__init__)
        torch.cuda._lazy_init = lambda: None
        torch.cuda._exchange_device = torch.cuda._maybe_exchange_device = lambda index: index  # torch.cuda.device_of
        torch.utils.swap_tensors = _swap_unless_moved
        torch.autograd.grad = _graph_checked_grad
        real_free = memory.free_bytes
        memory.free_bytes = lambda device: FREE_BYTES if _is_cuda(device) else real_free(device)
        mode = super().__enter__()
        with self.fake:  # the fake mode entered once: before, ``cpu_tensor.to("cuda")`` asks the driver
            torch.empty(1, device=CUDA)
        return mode

    def __exit__(self, *exc):  # noqa: ANN002
        (torch.cuda._lazy_init, torch.cuda._exchange_device, torch.cuda._maybe_exchange_device,
         memory.free_bytes, torch.utils.swap_tensors, torch.autograd.grad, torch.backends.cudnn.enabled,
         torch.autocast.__init__) = self._saved
        return super().__exit__(*exc)


def _swap_unless_moved(t1: torch.Tensor, t2: torch.Tensor) -> None:
    """``Module.to`` swaps a fake parameter with its moved copy, which a fake tensor refuses: a parameter
    already on the target device stays as it is (what a real tensor's ``.data =`` amounts to)."""
    if isinstance(t1, FakeTensor) and t1.device == t2.device and t1.dtype == t2.dtype and t1.shape == t2.shape:
        return
    _real_swap(t1, t2)


_real_swap = torch.utils.swap_tensors


def _graph_checked_grad(outputs, inputs, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
    """``torch.autograd.grad`` without autograd's engine, which on a CUDA device guards onto the
    device's stream and needs a CUDA context (``hasPrimaryContext``): every input must be in the
    recorded graph of the outputs, and the gradients are fake tensors of the inputs' shapes on their
    devices (values unknown, as everything on the fake device)."""
    outputs = [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)
    inputs = [inputs] if isinstance(inputs, torch.Tensor) else list(inputs)
    reached = _leaves(outputs)
    for i, t in enumerate(inputs):
        if id(t) not in reached and t.grad_fn not in reached.values():
            raise RuntimeError(f"input {i} of torch.autograd.grad is not in the graph of its outputs")
    return tuple(torch.zeros_like(t) for t in inputs)


def _leaves(outputs: list) -> dict:
    """{id(leaf tensor): AccumulateGrad node} and {id(node): node} of every node the outputs' graph holds."""
    seen: dict = {}
    stack = [o.grad_fn for o in outputs if o.grad_fn is not None]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen[id(node)] = node
        variable = getattr(node, "variable", None)
        if variable is not None:
            seen[id(variable)] = node
        stack.extend(next_node for next_node, _ in node.next_functions)
    return seen
RANDOM_OPS = ("rand", "randn", "randint", "randperm", "normal", "uniform", "bernoulli", "multinomial", "exponential", "random_")


_PRODUCTS = {getattr(torch.ops.aten, name).default for name in ("mm", "bmm", "addmm", "baddbmm", "convolution")}


def _autocast_on_fake_cuda(init):  # noqa: ANN001
    """``torch.autocast("cuda")`` turns itself off when torch sees no GPU: while it is made, torch sees
    one that supports bfloat16."""

    def made(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        saved = torch.cuda.is_available, torch.cuda.is_bf16_supported
        torch.cuda.is_available = lambda: True
        torch.cuda.is_bf16_supported = lambda *a, **k: True
        try:
            init(self, *args, **kwargs)
        finally:
            torch.cuda.is_available, torch.cuda.is_bf16_supported = saved

    return made


def _check_generator(name: str, flat: list, target: torch.device) -> None:
    generators = [g for g in flat if isinstance(g, torch.Generator)]
    for g in generators:
        if g.device.type != target.type:
            raise RuntimeError(f"{name}: Expected a '{target.type}' device type for generator but found '{g.device.type}'")
    if not generators:
        raise RuntimeError(f"{name} on {target} without a generator: it would draw from CUDA's global stream")


def _leaves_of(args: tuple, kwargs: dict) -> list:
    """The arguments of an op, lists and tuples (of tensors, of indices) opened one level."""
    out = []
    for a in (*args, *kwargs.values()):
        if isinstance(a, (list, tuple)):
            out.extend(a)
        else:
            out.append(a)
    return out
