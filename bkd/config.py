"""What a training run is asked to do (TrainConfig), and how its arithmetic runs (Computation, resolved once).

TrainConfig's fields are the training script's flags by name, with the original's defaults;
the script and the Python API (bkd.api) both build one. `--reference` is turned into a
Computation here and nowhere else: the original's loader, SGD call, evaluation batch size and
autograd, its end-of-training overwrite and its CIFAR-100 validation normalisation.
"""
from dataclasses import dataclass, fields

from utils.errors import UsageError


@dataclass
class TrainConfig:
    n_epoch: int = 300
    lr: float = 0.02
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_step: int = 150  # StepLR step in epochs, gamma 0.1
    width: int = 64  # channels of PreResNet18's first stage
    seed: int = 0
    noisy_val_freq: int = 10
    clean_test_freq: int = 10
    print_freq: int = 100
    alpha1: float = 0.30
    alpha2: float = 0.45
    alpha3: float = 0.55
    alpha4: float = 0.70
    num_workers: int = 4  # PIL loader only
    loader: str = "device"  # "device" or "torchvision" (the original's PIL workers)
    eval_batch_size: int = 0  # 0: 1024 on CUDA, 256 on the CPU
    amp: bool = False
    compile: bool = None  # torch.compile both networks; None: where it pays (compiles)
    no_channels_last: bool = False
    overfitting_epoch: int = None  # force the split at this epoch instead of the confidence rule
    detach_robust_target: bool = False  # not the original: no gradient from the robust target into the student
    legacy_cifar100_val_norm: bool = False
    reference: bool = False  # the original's computation bit for bit

    @classmethod
    def from_namespace(cls, namespace):
        return cls(**{f.name: getattr(namespace, f.name) for f in fields(cls) if hasattr(namespace, f.name)})

    @property
    def alphas(self):
        return (self.alpha1, self.alpha2, self.alpha3, self.alpha4)


@dataclass(frozen=True)
class Computation:
    """How the run computes; the only place that knows what --reference changes."""

    loader: str
    eval_batch_size: int
    channels_last: bool  # requested; the CPU may still refuse narrow networks (bkd.engine.use_channels_last)
    sgd_foreach: bool  # None: PyTorch's default (the original's call)
    eval_autograd: bool  # the original evaluates with autograd on
    end_save_overwrites_best: bool  # the original overwrites the best-by-validation checkpoint at the end
    legacy_cifar100_val_norm: bool
    amp: bool
    compile: bool
    defer_full_pass: bool = False  # the full-set pass only for the epoch the overfitting rule picks (not the original)

    @property
    def name(self):
        return "reference mode" if self.eval_autograd else f"loader {self.loader}"


# torch.compile costs about a minute on a CPU the first time (less from the on-disk cache) and saves a share of
# every step that grows with the network: from width 16 (the quick preset) it pays back within a quick run;
# below, a whole run is seconds (README, 'Performance').
COMPILE_MIN_WIDTH = 16


def compiles(config):
    """--compile / --no_compile as asked; by default, for networks from COMPILE_MIN_WIDTH channels; never with --reference."""
    if config.reference:
        return False
    return config.compile if config.compile is not None else config.width >= COMPILE_MIN_WIDTH


POSITIVE = ("n_epoch", "batch_size", "lr", "print_freq", "clean_test_freq", "noisy_val_freq", "width", "lr_step")


def check_config(config):
    """One line naming a bad value (the flag's name: the script's flags and the API's arguments are the same)."""
    for name in POSITIVE:
        if not getattr(config, name) > 0:
            raise UsageError(f"--{name} {getattr(config, name)} must be positive")
    for name in ("momentum", "weight_decay", "eval_batch_size", "num_workers"):
        if not getattr(config, name) >= 0:
            raise UsageError(f"--{name} {getattr(config, name)} must be 0 or positive")
    for name in ("alpha1", "alpha2", "alpha3", "alpha4"):
        if not 0 <= getattr(config, name) <= 1:
            raise UsageError(f"--{name} {getattr(config, name)} must be in [0, 1]")
    clash = [f"--{name}" for name in ("amp", "compile", "detach_robust_target") if getattr(config, name)]
    if config.reference and clash:
        raise UsageError(f"--reference runs the original's computation; drop {', '.join(clash)}")


def resolve_computation(config, device):
    if config.reference:
        # PIL transforms in DataLoader workers, every loader at the training batch size, fp32 NCHW, a plain
        # SGD call, autograd on in evaluation, the end-of-training overwrite, CIFAR-10 statistics for CIFAR-100 validation
        return Computation("torchvision", config.batch_size, False, None, True, True, True, False, False)
    eval_batch = config.eval_batch_size or (1024 if device.type == "cuda" else 256)
    return Computation(config.loader, eval_batch, not config.no_channels_last, True, False, False,
                       config.legacy_cifar100_val_norm, config.amp, compiles(config),
                       defer_full_pass=config.loader == "device")  # its augmentation can be re-drawn for any epoch


ORIGINAL_TEST_BATCH = 64  # the original's learning.py evaluates at batch 64


def resolve_evaluation(reference, eval_batch_size):
    """learning.py's test pass: the original's (PIL loader, batch 64, autograd on) with `reference`, else ours."""
    if reference:
        return Computation("torchvision", ORIGINAL_TEST_BATCH, False, None, True, True, True, False, False)
    return Computation("device", eval_batch_size, False, True, False, False, False, False, False)


def uses_pil_workers(config):
    """The PIL loader (the reference mode's too), whose random streams depend on the number of its workers."""
    return config.reference or config.loader == "torchvision"
