"""One epoch of BKD training and the evaluation passes, wiring the pieces of bkd.method.

The order of operations inside an iteration is the original's (spec section 7), so the
same code serves the default mode and the reference mode; the modes differ only in the
loader, the optimiser call, the memory format and the precision handed in here.
Statistics stay on the training device; values are read back to the host only when a
progress line is printed, a trace is recorded, or the epoch ends.
"""
import contextlib
import signal
import sys
from dataclasses import dataclass

import torch

from bkd.method import agreement, compensation_loss, label_probability, one_hot, robust_targets, teacher_loss
from bkd.utils import logfmt
from bkd.utils.errors import DivergedError, Interrupted, first_line


class Precision:
    """The arithmetic of the forward passes: "fp32" (the default, as the original), or mixed precision "bf16" /
    "fp16" (autocast; fp16 with gradient scaling), as bkd.config.resolve_precision chose it for the device."""

    DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

    def __init__(self, device, name="fp32"):
        self.device_type, self.name, self.dtype = device.type, name, self.DTYPES[name]
        self.enabled = name != "fp32"
        self.scaler = torch.amp.GradScaler(device.type, enabled=name == "fp16")

    def autocast(self):
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def step(self, loss, optimizer):
        optimizer.zero_grad()
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()


class StopFlag:
    """Turns SIGINT/SIGTERM into a flag the training loop checks between iterations."""

    def __init__(self):
        self.signal = None

    def install(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handler)
        return self

    def _handler(self, signum, frame):
        if self.signal is not None:  # second signal: stop now
            raise KeyboardInterrupt
        self.signal = signum

    def check(self, where):
        if self.signal is not None:
            name = signal.Signals(self.signal).name
            raise Interrupted(f"{name} received during {where}")  # the caller says what the run directory holds


# oneDNN's 1x1 backward-weights kernel for channels-last inputs on x86 CPUs writes past its workspace when the
# convolution has fewer input channels than its vector block (8 on AVX2, 16 on AVX-512): it hangs, crashes or
# returns wrong gradients (uxlfoundation/oneDNN#6035, seen here on AVX2). PreResNet18's narrowest 1x1
# convolution (the first projection shortcut) has `width` input channels.
CPU_CHANNELS_LAST_MIN_WIDTH = 16


def use_channels_last(requested, device, width):
    """Channels-last when requested, except on a CPU with a network too narrow for oneDNN's 1x1 kernels."""
    return requested and (device.type != "cpu" or width >= CPU_CHANNELS_LAST_MIN_WIDTH)


class CompiledPair:
    """torch.compile for teacher and student, with eager as the fallback.

    One graph per mode and the batch size that mode mostly sees: training batches in train mode and evaluation
    batches in eval mode. Any other batch size (an epoch's last batch) runs eager, so an odd size costs no
    compilation; eager and compiled differ in rounding only. The teacher and the student share their graphs
    (same code, the weights are inputs). If compilation fails or torch.compile is unavailable, both networks run
    eager from then on, and `log` gets one [bkd] line saying so.
    """

    def __init__(self, teacher, student, batch_sizes, log):
        self.nets = (teacher, student)
        self.batch_sizes = batch_sizes  # {True: training batch size, False: evaluation batch size}
        self.log = log
        self.announced = set()
        try:
            self.compiled = tuple(torch.compile(net, dynamic=False) for net in self.nets)
        except Exception as err:  # torch.compile unsupported here (platform, Python version)
            self._fall_back(err)

    def _fall_back(self, err):
        self.compiled = None
        self.log(logfmt.ours(f"torch.compile failed ({first_line(err)}); the networks run eager (--no_compile skips "
                             "the attempt)"))

    def __call__(self, which, x):
        net = self.nets[which]
        if self.compiled is None or len(x) != self.batch_sizes[net.training]:
            return net(x)
        mode = "training" if net.training else "evaluation"
        if mode not in self.announced:
            self.announced.add(mode)
            self.log(logfmt.ours(f"torch.compile: compiling the networks for {mode} at batch {len(x)} (once per "
                                 "process: a minute or two the first time, seconds from the cache; --no_compile skips it)"))
        try:
            with _backward_compiled_with_forward():
                return self.compiled[which](x)
        except Exception as err:
            if not compilation_failed(err):  # out of memory, a device-side assert, ...: not the compiler's, not retried
                raise
            self._fall_back(err)
            return net(x)

    @property
    def teacher(self):
        return _Forward(self, 0)

    @property
    def student(self):
        return _Forward(self, 1)


def compilation_failed(err):
    """Did torch.compile fail (dynamo or inductor: a graph it cannot trace, a compiler missing or failing)? An error of
    the computation itself (out of memory, a device-side assert) is not a compilation failure."""
    if isinstance(err, torch.cuda.OutOfMemoryError):  # (torch.OutOfMemoryError from torch 2.5 on: the same class)
        return False
    kinds = []
    for module, names in (("torch._dynamo.exc", ("TorchDynamoException",)),
                          ("torch._inductor.exc", ("CppCompileError", "InvalidCxxCompiler", "OperatorIssue",
                                                   "CppWrapperCodegenError", "SubgraphLoweringException")),
                          ("triton.compiler.errors", ("CompilationError",))):
        found = sys.modules.get(module)
        kinds += [getattr(found, name) for name in names if isinstance(getattr(found, name, None), type)]
    return isinstance(err, tuple(kinds))


def _backward_compiled_with_forward():
    """Compile the backward graph with the forward graph (torch compiles it at the first backward by default), so
    that a failure to compile it surfaces here, where the run can still go on eager."""
    try:
        from torch._functorch import config
    except ImportError:
        return contextlib.nullcontext()
    if not hasattr(config, "force_non_lazy_backward_lowering"):
        return contextlib.nullcontext()
    return config.patch(force_non_lazy_backward_lowering=True)


class _Forward:
    """One network of a CompiledPair: called like the network, and the network for everything else."""

    def __init__(self, pair, which):
        self.pair, self.which = pair, which

    def __call__(self, x):
        return self.pair(self.which, x)

    def __getattr__(self, name):  # train(), eval(), parameters(), ...
        return getattr(self.pair.nets[self.which], name)


def progress(iterable, description, total=None):
    """A tqdm bar on stderr when stderr is a terminal; the plain iterable otherwise (never in a log)."""
    if not sys.stderr.isatty():
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=description, total=total, leave=False, file=sys.stderr, dynamic_ncols=True)


def forward_pair(teacher, student, x, precision, channels_last=False):
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with precision.autocast():
        zt, zs = teacher(x), student(x)
    return zt.float(), zs.float()


LABEL_PROB_KEYS = ("teacher", "student", "agreement")  # pT[y], pS[y], pA[y]


def _ignore(*args):
    pass


def train_epoch(teacher, student, loader, optimizer, precision, *, epoch, n_epoch, num_classes, sample_alpha=None,
                detach_target=False, print_freq=100, channels_last=False, stop=None, log=print, on_iteration=_ignore):
    """One epoch. Warm-up when `sample_alpha` is None, else the robust phase with per-sample alphas.

    `detach_target` (not the original) stops the robust target's gradient into the student.
    `on_iteration(epoch, i, idx, x, y, target, loss, naive, comp)` hears every iteration (a trace records it).
    Returns dict(mean_top_student (a float32 value, as the original accumulates it), label_prob: the teacher's,
    student's and agreed probability of each sample's label (dict of (N,) tensors), loss, naive, comp (epoch means)).
    """
    teacher.train()
    student.train()
    device = next(teacher.parameters()).device
    n = loader.num_samples
    warmup = sample_alpha is None
    probs = torch.zeros(3, n, device=device)  # pT[y], pS[y], pA[y] by sample index
    sum_max_student = 0  # running float32 sum of max_c pS, as the original
    sums = torch.zeros(3, device=device)  # loss, naive, comp, weighted by batch size (our epoch summary)
    first_bad = torch.tensor(-1, device=device)
    last_iter = n // loader.batch_size  # the original prints len(train set) // batch size as the last iteration
    bar = progress(loader, f"epoch {epoch}", total=len(loader))
    printed = i = 0
    for i, (x, y, idx) in enumerate(bar):
        if stop is not None:
            stop.check(f"epoch {epoch}, iteration {i}")
        zt, zs = forward_pair(teacher, student, x, precision, channels_last)
        onehot = one_hot(y, num_classes)
        comp = compensation_loss(zt, zs, onehot)
        ps, pt = zs.softmax(dim=1), zt.softmax(dim=1)
        with torch.no_grad():
            probs[:, idx] = torch.stack([label_probability(p, y) for p in (pt, ps, agreement(pt, ps))])
            sum_max_student = sum_max_student + ps.max(dim=1)[0].sum()
        target = onehot if warmup else robust_targets(onehot, ps.detach() if detach_target else ps, sample_alpha[idx])
        naive = teacher_loss(zt, target)
        loss = naive + comp
        precision.step(loss, optimizer)
        with torch.no_grad():
            sums += torch.stack([loss, naive, comp]) * len(y)
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss), i, first_bad)
        on_iteration(epoch, i, idx, x, y, target, loss, naive, comp)
        if i % print_freq == 0:
            _check_finite(first_bad, epoch)
            printed = i
            log(logfmt.iteration(epoch, n_epoch, i, last_iter, loss.item(), naive.item(), comp.item()))
            if bar is not loader:
                bar.set_postfix(loss=f"{loss.item():.4f}")
    _check_finite(first_bad, epoch)
    if printed != i:
        log(logfmt.iteration(epoch, n_epoch, i, last_iter, loss.item(), naive.item(), comp.item()))
    log("")
    totals = (sums / n).tolist()
    return {
        "mean_top_student": (sum_max_student / n).item(),
        "label_prob": dict(zip(LABEL_PROB_KEYS, probs)),
        "loss": totals[0],
        "naive": totals[1],
        "comp": totals[2],
    }


def _check_finite(first_bad, epoch):
    bad = int(first_bad)
    if bad >= 0:
        raise DivergedError(f"non-finite loss at epoch {epoch}, iteration {bad} (lower --lr); stopped before saving the epoch")


@dataclass
class Pass:
    """What an evaluation pass yields, per sample where it is a tensor."""

    accuracy: float  # agreement accuracy in %, against the loader's labels
    label_prob: torch.Tensor  # the agreed probability of the sample's label, pA[y] (float32)
    agreed: torch.Tensor  # the label teacher and student agree on, argmax pA
    agreed_prob: torch.Tensor  # its agreed probability, max pA
    probs: torch.Tensor = None  # (N, C) agreement probabilities, with keep_probs=True


def evaluate(teacher, student, loader, precision, channels_last=False, autograd=False, description="evaluation",
             keep_probs=False):
    """Eval-mode pass over `loader`. `autograd=True` keeps autograd on, as the original's evaluation does."""
    teacher.eval()
    student.eval()
    device = next(teacher.parameters()).device
    correct = torch.zeros((), dtype=torch.long, device=device)
    label_prob, agreed_prob = torch.zeros(2, loader.num_samples, device=device)
    agreed = torch.zeros(loader.num_samples, dtype=torch.long, device=device)
    probs = None
    total = 0
    with torch.set_grad_enabled(autograd):
        for x, y, idx in progress(loader, description, total=len(loader)):
            zt, zs = forward_pair(teacher, student, x, precision, channels_last)
            pa = agreement(zt.softmax(dim=1), zs.softmax(dim=1)).detach()
            top_prob, top = pa.max(dim=1)
            correct += (pa.argmax(dim=1) == y).sum()
            label_prob[idx], agreed[idx], agreed_prob[idx] = label_probability(pa, y), top, top_prob
            if keep_probs:
                if probs is None:
                    probs = torch.zeros(loader.num_samples, pa.shape[1], device=device)
                probs[idx] = pa
            total += len(y)
    return Pass(100 * float(correct) / float(max(total, 1)), label_prob, agreed, agreed_prob, probs)


def group_alphas(groups, alphas, device):
    """Per-sample alpha (float32) from group ids 1..4 and (alpha1, alpha2, alpha3, alpha4)."""
    table = torch.tensor((1.0,) + tuple(alphas), device=device)
    return table[torch.as_tensor(groups, device=device)]
