"""The machinery under the loop: the arithmetic of the forward passes (Precision), the networks as the run calls them
(Nets, compiled or not: CompiledPair), and the evaluation pass (the original's `evaluate`).

Statistics stay on the training device; values are read back to the host only when a line is printed, a trace is
recorded, or a pass ends.
"""

import contextlib
import functools
import sys
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch._functorch import config as functorch_config

from bkd.data.loaders import Loader
from bkd.method import agreement, label_probability, predict
from bkd.utils import logfmt
from bkd.utils.errors import first_line
from bkd.utils.logfmt import Log

T = TypeVar("T")
Forward = Callable[[torch.Tensor], torch.Tensor]  # a network's forward pass, compiled or not


class Precision:
    """The arithmetic of the forward passes: "fp32" (the default, as the original), or mixed precision "bf16" /
    "fp16" (autocast; fp16 with gradient scaling), as bkd.config.resolve_precision chose it for the device."""

    DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

    def __init__(self, device: torch.device, name: str = "fp32") -> None:
        self.device_type, self.name, self.dtype = device.type, name, self.DTYPES[name]
        self.enabled = name != "fp32"
        self.scaler = torch.amp.GradScaler(device.type, enabled=name == "fp16")

    def autocast(self) -> AbstractContextManager[Any]:
        """The forward passes' autocast (nothing in fp32)."""
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """One optimiser step on `loss` (scaled in fp16)."""
        optimizer.zero_grad()
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()


# oneDNN's AVX2 kernels of a 1x1 stride-2 convolution on channels-last inputs write past their workspace when the
# convolution has fewer input channels than the kernels' block of 8: they hang, crash or return wrong values
# (uxlfoundation/oneDNN#6035; benchmarks/onednn_1x1.py reproduces it, docs/performance.md). Stride 1, NCHW and 8 or more
# input channels are not affected, nor were AVX-512's kernels where tried. PreResNet18's narrowest such convolution (the
# first projection shortcut) has `width` input channels: below 16 a CPU keeps NCHW (a compiled network cannot: inductor
# computes convolutions channels-last on a CPU whatever the format, so bkd.config.compile_refusal keeps it eager).
CPU_CHANNELS_LAST_MIN_WIDTH = 16


def use_channels_last(requested: bool, device: torch.device, width: int) -> bool:
    """Channels-last when requested, except on a CPU with a network too narrow for oneDNN's 1x1 kernels."""
    return requested and (device.type != "cpu" or width >= CPU_CHANNELS_LAST_MIN_WIDTH)


class CompiledPair:
    """torch.compile for teacher and student, with eager as the fallback; `nets` are the two forward functions.

    One graph per mode and the batch size that mode mostly sees: training batches in train mode and evaluation
    batches in eval mode. Any other batch size (an epoch's last batch) runs eager, so an odd size costs no
    compilation; eager and compiled differ in rounding only. The teacher and the student share their graphs
    (same code, the weights are inputs). If compilation fails or torch.compile is unavailable, both networks run
    eager from then on, and `log` gets one [bkd] line saying so.
    """

    def __init__(
        self, teacher: torch.nn.Module, student: torch.nn.Module, batch_sizes: dict[bool, int], log: Log
    ) -> None:
        self.modules = (teacher, student)
        self.batch_sizes = batch_sizes  # {True: training batch size, False: evaluation batch size}
        self.log = log
        self.announced: set[str] = set()
        self.fallback: str | None = None  # why the networks run eager (compilation failed), once they do
        self.compiled: tuple[Callable[..., Any], ...] | None
        try:
            self.compiled = tuple(torch.compile(net, dynamic=False) for net in self.modules)
        except Exception as err:  # torch.compile unsupported here (platform, Python version)
            self._fall_back(err)
        self.nets = tuple(functools.partial(self, which) for which in (0, 1))

    def _fall_back(self, err: BaseException) -> None:
        self.compiled, self.fallback = None, f"torch.compile failed ({first_line(err)})"
        self.log(logfmt.ours(f"{self.fallback}; the networks run eager (--no_compile skips the attempt)"))

    def __call__(self, which: int, x: torch.Tensor) -> torch.Tensor:
        net = self.modules[which]
        if self.compiled is None or len(x) != self.batch_sizes[net.training]:
            return net(x)
        mode = "training" if net.training else "evaluation"
        if mode not in self.announced:
            self.announced.add(mode)
            self.log(
                logfmt.ours(
                    f"torch.compile: compiling the networks for {mode} at batch {len(x)} (once per "
                    "process: a minute or two the first time, seconds from the cache; --no_compile skips it)"
                )
            )
        try:
            # A graph's backward is compiled at its first backward pass by default, outside this try, where a failure
            # would end the run instead of falling back. functorch's (private) force_non_lazy_backward_lowering
            # compiles it here, with the forward (tests/test_compile.py shows the difference).
            with functorch_config.patch(NON_LAZY_BACKWARD):
                return self.compiled[which](x)
        except Exception as err:
            if not compilation_failed(err):  # out of memory, a device-side assert, ...: not the compiler's, not retried
                raise
            self._fall_back(err)
            return net(x)


# (a torch without the setting compiles the backward lazily: a failure there is not caught)
NON_LAZY_BACKWARD: dict[str, Any] = (
    {"force_non_lazy_backward_lowering": True} if hasattr(functorch_config, "force_non_lazy_backward_lowering") else {}
)


def compilation_failed(err: BaseException) -> bool:
    """Did torch.compile fail (an error of dynamo, inductor or triton: a graph it cannot trace, a compiler missing or
    failing)? An error of the computation itself (out of memory, a device-side assert) is not a compilation failure."""
    return any(kind.__module__.startswith(("torch._dynamo", "torch._inductor", "triton")) for kind in type(err).__mro__)


def progress(iterable: Iterable[T], description: str, total: int | None = None) -> Iterable[T]:
    """A tqdm bar on stderr when stderr is a terminal; the plain iterable otherwise (never in a log)."""
    if sys.stderr is None or not sys.stderr.isatty():  # (None: a service's or pythonw's process has no stderr)
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=description, total=total, leave=False, file=sys.stderr, dynamic_ncols=True)


def show(bar: Iterable[Any], **values: str) -> None:
    """Values beside a progress bar (nothing where `progress` gave no bar)."""
    set_postfix = getattr(bar, "set_postfix", None)
    if set_postfix is not None:
        set_postfix(**values)


class Nets:
    """Teacher and student as a run calls them: the two modules, the functions that run their forward passes (the
    modules, or CompiledPair.nets), the arithmetic (Precision) and whether inputs go channels-last."""

    def __init__(
        self,
        teacher: torch.nn.Module,
        student: torch.nn.Module,
        precision: Precision,
        channels_last: bool = False,
        forward: Sequence[Forward] | None = None,
    ) -> None:
        self.teacher, self.student, self.precision, self.channels_last = teacher, student, precision, channels_last
        self.forward = forward or (teacher, student)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(teacher logits, student logits) of a batch, in float32. Both forward passes run before either output is
        read (a CUDA graph's outputs are copied out by its caller: benchmarks/gpu_check.py)."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.precision.autocast():
            zt, zs = self.forward[0](x), self.forward[1](x)
        return zt.float(), zs.float()

    def train(self, mode: bool = True) -> None:
        """Both networks in training (or, mode=False, evaluation) mode."""
        self.teacher.train(mode)
        self.student.train(mode)

    @property
    def device(self) -> torch.device:
        """Where the networks' weights are."""
        return next(self.teacher.parameters()).device


@dataclass
class Pass:
    """What an evaluation pass yields, per sample where it is a tensor."""

    accuracy: float  # agreement accuracy in %, against the loader's labels
    label_prob: torch.Tensor  # the agreed probability of the sample's label, pA[y] (float32)
    agreed: torch.Tensor  # the label teacher and student agree on, argmax pA
    agreed_prob: torch.Tensor  # its agreed probability, max pA
    probs: torch.Tensor | None = None  # (N, C) agreement probabilities, with keep_probs=True


def evaluate(
    nets: Nets, loader: Loader, autograd: bool = False, description: str = "evaluation", keep_probs: bool = False
) -> Pass:
    """Eval-mode pass of `nets` over `loader`. `autograd=True` keeps autograd on, as the original's evaluation does."""
    nets.train(False)
    device = nets.device
    correct = torch.zeros((), dtype=torch.long, device=device)
    label_prob, agreed_prob = torch.zeros(2, loader.num_samples, device=device)
    agreed = torch.zeros(loader.num_samples, dtype=torch.long, device=device)
    probs = None
    total = 0
    with torch.set_grad_enabled(autograd):
        for x, y, idx in progress(loader, description, total=len(loader)):
            zt, zs = nets(x)
            pa = agreement(zt.softmax(dim=1), zs.softmax(dim=1)).detach()
            top_prob, top = pa.max(dim=1)
            correct += (predict(pa) == y).sum()
            label_prob[idx], agreed[idx], agreed_prob[idx] = label_probability(pa, y), top, top_prob
            if keep_probs:
                if probs is None:
                    probs = torch.zeros(loader.num_samples, pa.shape[1], device=device)
                probs[idx] = pa
            total += len(y)
    return Pass(100 * float(correct) / float(max(total, 1)), label_prob, agreed, agreed_prob, probs)
