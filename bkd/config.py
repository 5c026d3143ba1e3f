"""What a training run is asked to do (TrainConfig), and how its arithmetic runs (Computation, resolved once).

TrainConfig is the one source of the training values: each field carries its default (the original's), the help
text of its flag and the check of its value. The scripts' flags are made from it (flags.py), the Python API takes
its names (bkd.api), and `check_config` checks them; a new hyper-parameter is one field here. `--reference` is
turned into a Computation here and nowhere else: the original's loader, SGD call, evaluation batch size and
autograd, its end-of-training overwrite, its CIFAR-100 validation normalisation and its TF32.
"""

import math
import numbers
import types
from collections.abc import Callable, Mapping
from dataclasses import Field, dataclass, field, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from bkd.utils.errors import UsageError

if TYPE_CHECKING:  # (the launcher imports this module without torch)
    import torch

SEED_LIMIT = 2**32  # numpy's seed range


# The checks of single values: each returns what is wrong with `value` of flag `name`, or None.
Check = Callable[[str, Any], str | None]


def positive(name: str, value: float) -> str | None:
    return None if value > 0 else f"--{name} {value} must be positive"


def non_negative(name: str, value: float) -> str | None:
    return None if value >= 0 else f"--{name} {value} must be 0 or positive"


def share(name: str, value: float) -> str | None:
    return None if 0 <= value <= 1 else f"--{name} {value} must be in [0, 1]"


def batch(name: str, value: int) -> str | None:
    return positive(name, value) or (
        None if value >= 2 else f"--{name} {value}: BatchNorm cannot train on batches of one image; give 2 or more"
    )


def validation_share(name: str, value: float) -> str | None:
    return None if 0 <= value < 1 else f"--{name} {value} must be in [0, 1); 0 = no validation set (challenge setting)"


def seed_range(name: str, value: int) -> str | None:
    return None if 0 <= value < SEED_LIMIT else f"--{name} {value} must be in 0..2**32-1 (numpy's seed range)"


class one_of:  # (a check, named as the others)
    """The check that a value is one of `choices` (which the flag's argparse choices are too)."""

    def __init__(self, *choices: str) -> None:
        self.choices = choices

    def __call__(self, name: str, value: str) -> str | None:
        return None if value in self.choices else f"--{name} {value!r} is unknown; use {' or '.join(self.choices)}"


def option(default: Any, help: str, check: Check | None = None) -> Any:
    """A TrainConfig field: its default, its flag's help text, and the check of its value (None: any value of its
    type; a float must always be finite)."""
    return field(default=default, metadata={"help": help, "check": check})


@dataclass
class TrainConfig:
    """The training values, with the original's defaults; their flags are the training script's (flags.py)."""

    n_epoch: int = option(300, "number of epochs", positive)
    lr: float = option(0.02, "learning rate", positive)
    batch_size: int = option(128, "training batch size", batch)
    momentum: float = option(0.9, "SGD momentum", non_negative)
    weight_decay: float = option(5e-4, "SGD weight decay", non_negative)
    lr_step: int = option(150, "StepLR step size in epochs (gamma 0.1)", positive)
    width: int = option(64, "channels of the first stage of PreResNet18 (64 = original)", positive)
    seed: int = option(0, "seed of python, numpy and torch", seed_range)
    val_ratio: float = option(
        0.1, "share of training images held out as noisy validation set (0 = challenge setting)", validation_share
    )
    subset: int = option(0, "train on a stratified, seeded subset of this many images (0 = all)", non_negative)
    noisy_val_freq: int = option(
        10, "validate (and keep the best checkpoint) at epochs e %% freq == 0 (and the last)", positive
    )
    clean_test_freq: int = option(10, "report clean test accuracy at epochs e %% freq == 0 (and the last)", positive)
    print_freq: int = option(100, "print a progress line every this many iterations", positive)
    alpha1: float = option(0.30, "robust-phase alpha of group 1 (most trusted)", share)
    alpha2: float = option(0.45, "robust-phase alpha of group 2", share)
    alpha3: float = option(0.55, "robust-phase alpha of group 3", share)
    alpha4: float = option(0.70, "robust-phase alpha of group 4 (flagged as noisy)", share)
    num_workers: int = option(4, "DataLoader workers (--loader torchvision only)", non_negative)
    loader: str = option(
        "device",
        "input pipeline: batched on the device, or the original's PIL workers",
        one_of("device", "torchvision"),
    )
    eval_batch_size: int = option(0, "batch size of evaluation passes (0 = 1024 on CUDA, 256 on CPU)", non_negative)
    amp: bool = option(
        False,
        "mixed precision: bf16 autocast where the device has bf16 natively (CUDA compute "
        "capability 8.0+; a CPU with AVX-512 BF16 or AMX), fp16 with gradient scaling on older GPUs; "
        "opt-in: it changed the outcome against fp32 on the quick preset",
    )
    compile: bool | None = option(
        None,
        "torch.compile both networks (default: from --width 16, where it pays; eager if it "
        "fails); --no_compile: run the networks eager",
    )
    no_channels_last: bool = option(False, "keep the NCHW memory format (channels-last is faster on CUDA and CPU)")
    cudnn_benchmark: bool = option(
        False,
        "CUDA: cuDNN's autotuned kernels (faster, nondeterministic: runs are no longer "
        "bit-reproducible, resume no longer bit-exact) instead of deterministic ones",
    )
    strict_fp32: bool = option(
        False,
        "CUDA: IEEE fp32 convolutions and matrix products instead of TF32 (the default on "
        "CUDA, as PyTorch's and the authors' torch: 10-bit mantissa products, several times "
        "faster on Ampere and newer)",
    )
    overfitting_epoch: int | None = option(
        None,
        "skip the confidence rule and split at this (0-based) epoch, acted upon when "
        "the rule could first have found it",
    )
    detach_robust_target: bool = option(False, "not the original: no gradient from the robust target into the student")
    legacy_cifar100_val_norm: bool = option(
        False, "normalise the CIFAR-100 validation set with CIFAR-10 statistics, as the original"
    )
    reference: bool = option(
        False,
        "the authors' computation bit for bit (PIL loader workers, fp32 NCHW, their SGD call "
        "and batch sizes; docs/reference-mode.md)",
    )

    @property
    def alphas(self) -> tuple[float, float, float, float]:
        return (self.alpha1, self.alpha2, self.alpha3, self.alpha4)


DEFAULTS = TrainConfig()  # the original's defaults (and ours for our flags)


def value_type(f: Field[Any]) -> type:
    """The type of a TrainConfig field's values: `int` for `int | None` (None: the run decides, or not given)."""
    if isinstance(f.type, types.UnionType):
        return next(t for t in f.type.__args__ if t is not type(None))
    assert isinstance(f.type, type), f.type  # (annotations are types here: no `from __future__ import annotations`)
    return f.type


@dataclass(frozen=True)
class Computation:
    """How the run computes; the only place that knows what --reference changes. Fields by name only."""

    loader: str = "device"
    eval_batch_size: int = 256
    channels_last: bool = True  # requested; the CPU may still refuse narrow networks (bkd.engine.use_channels_last)
    sgd_foreach: bool | None = True  # None: PyTorch's default (the original's call)
    eval_autograd: bool = False  # the original evaluates with autograd on
    end_save_overwrites_best: bool = False  # the original overwrites the best-by-validation checkpoint at the end
    legacy_cifar100_val_norm: bool = False
    precision: str = "fp32"  # fp32, or with --amp bf16 / fp16 (resolve_precision)
    compile: bool = False
    defer_full_pass: bool = False  # the full-set pass only for the epoch the overfitting rule picks (not the original)
    deterministic: bool = (
        True  # CUDA: deterministic cuDNN / cuBLAS kernels; False: cudnn.benchmark (utils.cuda.cuda_settings)
    )
    tf32: bool = True  # CUDA: TF32 in convolutions and matrix products (PyTorch's and the authors' torch 1.10 default)

    @property
    def name(self) -> str:
        return "reference mode" if self.eval_autograd else f"loader {self.loader}"

    @property
    def amp(self) -> bool:
        return self.precision != "fp32"


# torch.compile costs about a minute on a CPU the first time (less from the on-disk cache) and saves a share of
# every step that grows with the network: from width 16 (the quick preset) it pays back within a quick run;
# below, a whole run is seconds (docs/performance.md).
COMPILE_MIN_WIDTH = 16


AVX2_COMPILE_MIN_WIDTH = 8  # the block of oneDNN's AVX2 1x1 kernels (bkd/engine.py, CPU_CHANNELS_LAST_MIN_WIDTH)


def compile_refusal(config: TrainConfig, device: "torch.device | None") -> str | None:
    """Why the networks run eager although the flags compile them, or None. On an x86 CPU without AVX-512, a network
    narrower than 8 channels: inductor computes its convolutions channels-last on a CPU, and oneDNN's AVX2 kernels of
    the first shortcut convolution then hang, crash or compute wrong values (docs/performance.md)."""
    from bkd.utils.devices import cpu_kernels_avx2_at_most  # (here: the launcher imports this module without torch)

    if (
        device is None
        or device.type != "cpu"
        or config.width >= AVX2_COMPILE_MIN_WIDTH
        or not cpu_kernels_avx2_at_most()
    ):
        return None
    return (
        f"--compile: a network of width {config.width} runs eager on this CPU without AVX-512: compiled, its shortcut "
        f"convolutions would run on oneDNN's AVX2 kernels, which fail below {AVX2_COMPILE_MIN_WIDTH} channels "
        "(docs/performance.md)"
    )


def compiles(config: TrainConfig, device: "torch.device | None" = None) -> bool:
    """--compile / --no_compile as asked; by default, for networks from COMPILE_MIN_WIDTH channels; never with
    --reference, nor where compile_refusal says why not on `device` (None: the flags alone, as the launcher compares
    them)."""
    if config.reference:
        return False
    asked = config.compile if config.compile is not None else config.width >= COMPILE_MIN_WIDTH
    return asked and compile_refusal(config, device) is None


REFERENCE_CLASHES = ("amp", "compile", "detach_robust_target", "strict_fp32")  # the reference mode decides these itself


KINDS = {bool: "True or False", int: "a whole number", float: "a number", str: "a string"}


def of_type(value: Any, kind: type) -> bool:
    """`value` is a `kind` as a TrainConfig field takes it: a NumPy integer is a whole number and a NumPy float a
    number, but True is no number (a bool is Python's int)."""
    if kind is bool:
        return isinstance(value, (bool, np.bool_))
    if isinstance(value, (bool, np.bool_)):
        return False
    if kind is int:
        return isinstance(value, numbers.Integral)
    if kind is float:
        return isinstance(value, numbers.Real)
    return isinstance(value, kind)


def check_values(values: Mapping[str, Any]) -> None:
    """One line naming the first bad value of `values` (TrainConfig names: the flags' and the API's alike): a value of
    the wrong type (the API takes any), then one its check refuses."""
    for f in fields(TrainConfig):
        if f.name not in values:
            continue
        value, kind = values[f.name], value_type(f)
        if value is None and f.default is None:  # (None: the run decides, or not given)
            continue
        if value is None or not of_type(value, kind):
            raise UsageError(f"--{f.name} {value!r} must be {KINDS[kind]}, not {type(value).__name__}")
        if kind is float and not math.isfinite(value):
            raise UsageError(f"--{f.name} {value} must be a finite number")
        problem = f.metadata["check"] and f.metadata["check"](f.name, value)
        if problem:
            raise UsageError(problem)


def check_config(config: TrainConfig) -> None:
    """check_values of every field, then what depends on several of them."""
    check_values(vars(config))
    clash = [f"--{name}" for name in REFERENCE_CLASHES if getattr(config, name)]
    if config.reference and clash:
        raise UsageError(f"--reference runs the original's computation; drop {', '.join(clash)}")
    if config.overfitting_epoch is not None:
        check_overfitting_epoch(config.overfitting_epoch, config.n_epoch)


def check_overfitting_epoch(epoch: int, n_epoch: int) -> None:
    """One line where --overfitting_epoch could not be acted upon within the run's epochs."""
    from bkd.method import first_detectable_epoch, latest_forceable_epoch

    if epoch < 0 or first_detectable_epoch(epoch) >= n_epoch:
        latest = latest_forceable_epoch(n_epoch)
        fix = f"give an epoch in 0..{latest}" if latest is not None else "it needs --n_epoch 6 or more"
        raise UsageError(
            f"--overfitting_epoch {epoch} would be acted upon after epoch {first_detectable_epoch(max(epoch, 0))}, "
            f"outside the run's epochs 0..{n_epoch - 1}; {fix}, or more --n_epoch"
        )


def resolve_precision(device: "torch.device", amp: bool) -> str:
    """fp32 without --amp. With it: bf16 where the device has it natively (CUDA compute capability 8.0 or newer; a CPU
    with AVX-512 BF16 or AMX), fp16 with gradient scaling on older GPUs; refused elsewhere in one line."""
    if not amp:
        return "fp32"
    # (here: the launcher imports this module without torch)
    from bkd.utils.devices import cpu_native_bf16, cuda_native_bf16

    if device.type == "cuda":
        return "bf16" if cuda_native_bf16(device) else "fp16"
    if device.type == "cpu":
        if not cpu_native_bf16():
            import torch

            raise UsageError(
                f"--amp: this CPU ({torch.backends.cpu.get_cpu_capability()}) has no native bf16 (AVX-512 BF16 "
                "or AMX), where bf16 autocast runs many times slower than fp32; drop --amp"
            )
        return "bf16"
    raise UsageError(f"--amp: mixed precision is not supported on {device.type}; drop --amp")


def resolve_computation(config: TrainConfig, device: "torch.device") -> Computation:
    """The run's computation on `device`, from its flags: called once per run (training script, Python API)."""
    if device.type != "cuda":
        for name in ("cudnn_benchmark", "strict_fp32"):
            if getattr(config, name):
                raise UsageError(f"--{name} applies to CUDA devices only (this run is on {device}); drop it")
    if config.reference:
        # PIL transforms in DataLoader workers, every loader at the training batch size, fp32 NCHW, a plain
        # SGD call, autograd on in evaluation, the end-of-training overwrite, CIFAR-10 statistics for CIFAR-100
        # validation, TF32 on CUDA as the authors' torch 1.10 (deterministic kernels unless --cudnn_benchmark)
        return Computation(
            loader="torchvision",
            eval_batch_size=config.batch_size,
            channels_last=False,
            sgd_foreach=None,
            eval_autograd=True,
            end_save_overwrites_best=True,
            legacy_cifar100_val_norm=True,
            deterministic=not config.cudnn_benchmark,
            tf32=device.type == "cuda",
        )
    return Computation(
        loader=config.loader,
        eval_batch_size=config.eval_batch_size or default_eval_batch(device),
        channels_last=not config.no_channels_last,
        legacy_cifar100_val_norm=config.legacy_cifar100_val_norm,
        precision=resolve_precision(device, config.amp),
        compile=compiles(config, device),
        defer_full_pass=config.loader == "device",  # its augmentation can be re-drawn for any epoch
        deterministic=not config.cudnn_benchmark,
        tf32=device.type == "cuda" and not config.strict_fp32,
    )


def default_eval_batch(device: "torch.device") -> int:
    """The evaluation batch size where --eval_batch_size is 0."""
    return 1024 if device.type == "cuda" else 256


ORIGINAL_TEST_BATCH = 64  # the original's learning.py evaluates at batch 64


def resolve_evaluation(reference: bool, eval_batch_size: int) -> Computation:
    """learning.py's test pass: the original's (PIL loader, batch 64, autograd on, TF32) with `reference`, else ours."""
    if reference:
        return Computation(
            loader="torchvision",
            eval_batch_size=ORIGINAL_TEST_BATCH,
            channels_last=False,
            sgd_foreach=None,
            eval_autograd=True,
            end_save_overwrites_best=True,
            tf32=True,
        )
    return Computation(eval_batch_size=eval_batch_size, channels_last=False)
