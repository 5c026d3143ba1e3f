"""What a training run is asked to do (TrainConfig), and how its arithmetic runs (Computation, resolved once).

TrainConfig's fields are the training script's flags by name, with the original's defaults;
the script's parser (flags.py) takes its defaults from here, and the Python API (bkd.api) takes
the same names. `check_config` is the one check of their values. `--reference` is turned into a
Computation here and nowhere else: the original's loader, SGD call, evaluation batch size and
autograd, its end-of-training overwrite, its CIFAR-100 validation normalisation and its TF32.
"""
import math
from dataclasses import dataclass, fields

from bkd.utils.errors import UsageError


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
    val_ratio: float = 0.1  # share of the training images held out as the noisy validation set (0: the challenge's)
    subset: int = 0  # train on a stratified, seeded subset of this many images (0: all)
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
    cudnn_benchmark: bool = False  # CUDA: cuDNN's autotuned, nondeterministic kernels instead of deterministic ones
    strict_fp32: bool = False  # CUDA: IEEE fp32 convolutions and matrix products instead of TF32 (PyTorch's default)
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


DEFAULTS = TrainConfig()  # the original's defaults (and ours for our flags)


@dataclass(frozen=True)
class Computation:
    """How the run computes; the only place that knows what --reference changes. Fields by name only."""

    loader: str = "device"
    eval_batch_size: int = 256
    channels_last: bool = True  # requested; the CPU may still refuse narrow networks (bkd.engine.use_channels_last)
    sgd_foreach: bool = True  # None: PyTorch's default (the original's call)
    eval_autograd: bool = False  # the original evaluates with autograd on
    end_save_overwrites_best: bool = False  # the original overwrites the best-by-validation checkpoint at the end
    legacy_cifar100_val_norm: bool = False
    precision: str = "fp32"  # fp32, or with --amp bf16 / fp16 (resolve_precision)
    compile: bool = False
    defer_full_pass: bool = False  # the full-set pass only for the epoch the overfitting rule picks (not the original)
    deterministic: bool = True  # CUDA: deterministic cuDNN / cuBLAS kernels; False: cudnn.benchmark (utils.runtime.cuda_settings)
    tf32: bool = True  # CUDA: TF32 in convolutions and matrix products (PyTorch's and the authors' torch 1.10 default)

    @property
    def name(self):
        return "reference mode" if self.eval_autograd else f"loader {self.loader}"

    @property
    def amp(self):
        return self.precision != "fp32"


# torch.compile costs about a minute on a CPU the first time (less from the on-disk cache) and saves a share of
# every step that grows with the network: from width 16 (the quick preset) it pays back within a quick run;
# below, a whole run is seconds (docs/performance.md).
COMPILE_MIN_WIDTH = 16


def compiles(config):
    """--compile / --no_compile as asked; by default, for networks from COMPILE_MIN_WIDTH channels; never with --reference."""
    if config.reference:
        return False
    return config.compile if config.compile is not None else config.width >= COMPILE_MIN_WIDTH


FLOATS = ("lr", "momentum", "weight_decay", "val_ratio", "alpha1", "alpha2", "alpha3", "alpha4")
POSITIVE = ("n_epoch", "batch_size", "lr", "print_freq", "clean_test_freq", "noisy_val_freq", "width", "lr_step")
REFERENCE_CLASHES = ("amp", "compile", "detach_robust_target", "strict_fp32")  # the reference mode decides these itself
SEED_LIMIT = 2**32  # numpy's seed range


def check_config(config):
    """One line naming a bad value (the flag's name: the script's flags and the API's arguments are the same)."""
    for name in FLOATS:
        if not math.isfinite(getattr(config, name)):
            raise UsageError(f"--{name} {getattr(config, name)} must be a finite number")
    for name in POSITIVE:
        if not getattr(config, name) > 0:
            raise UsageError(f"--{name} {getattr(config, name)} must be positive")
    if config.batch_size < 2:
        raise UsageError(f"--batch_size {config.batch_size}: BatchNorm cannot train on batches of one image; give 2 or more")
    for name in ("momentum", "weight_decay", "eval_batch_size", "num_workers", "subset"):
        if not getattr(config, name) >= 0:
            raise UsageError(f"--{name} {getattr(config, name)} must be 0 or positive")
    for name in ("alpha1", "alpha2", "alpha3", "alpha4"):
        if not 0 <= getattr(config, name) <= 1:
            raise UsageError(f"--{name} {getattr(config, name)} must be in [0, 1]")
    check_seed_and_split(config.seed, config.val_ratio)
    if config.loader not in ("device", "torchvision"):
        raise UsageError(f"--loader {config.loader!r} is unknown; use device or torchvision")
    clash = [f"--{name}" for name in REFERENCE_CLASHES if getattr(config, name)]
    if config.reference and clash:
        raise UsageError(f"--reference runs the original's computation; drop {', '.join(clash)}")
    if config.overfitting_epoch is not None:
        check_overfitting_epoch(config.overfitting_epoch, config.n_epoch)


def check_seed_and_split(seed, val_ratio):
    """The values every script takes (learning.py and detection.py draw the same split)."""
    if not 0 <= seed < SEED_LIMIT:
        raise UsageError(f"--seed {seed} must be in 0..2**32-1 (numpy's seed range)")
    if not 0 <= val_ratio < 1:
        raise UsageError(f"--val_ratio {val_ratio} must be in [0, 1); 0 = no validation set (challenge setting)")


def check_overfitting_epoch(epoch, n_epoch):
    from bkd.method import first_detectable_epoch, latest_forceable_epoch

    if epoch < 0 or first_detectable_epoch(epoch) >= n_epoch:
        latest = latest_forceable_epoch(n_epoch)
        fix = f"give an epoch in 0..{latest}" if latest is not None else "it needs --n_epoch 6 or more"
        raise UsageError(f"--overfitting_epoch {epoch} would be acted upon after epoch {first_detectable_epoch(max(epoch, 0))}, "
                         f"outside the run's epochs 0..{n_epoch - 1}; {fix}, or more --n_epoch")


def resolve_precision(device, amp):
    """fp32 without --amp. With it: bf16 where the device has it natively (CUDA compute capability 8.0 or newer; a CPU
    with AVX-512 BF16 or AMX), fp16 with gradient scaling on older GPUs; refused elsewhere in one line."""
    if not amp:
        return "fp32"
    from bkd.utils.runtime import cpu_native_bf16, cuda_native_bf16  # (here: the launcher imports this module without torch)

    if device.type == "cuda":
        return "bf16" if cuda_native_bf16(device) else "fp16"
    if device.type == "cpu":
        if not cpu_native_bf16():
            import torch

            raise UsageError(f"--amp: this CPU ({torch.backends.cpu.get_cpu_capability()}) has no native bf16 (AVX-512 BF16 "
                             "or AMX), where bf16 autocast runs many times slower than fp32; drop --amp")
        return "bf16"
    raise UsageError(f"--amp: mixed precision is not supported on {device.type}; drop --amp")


def resolve_computation(config, device):
    """The run's computation on `device`, from its flags: called once per run (training script, Python API)."""
    if device.type != "cuda":
        for name in ("cudnn_benchmark", "strict_fp32"):
            if getattr(config, name):
                raise UsageError(f"--{name} applies to CUDA devices only (this run is on {device}); drop it")
    if config.reference:
        # PIL transforms in DataLoader workers, every loader at the training batch size, fp32 NCHW, a plain
        # SGD call, autograd on in evaluation, the end-of-training overwrite, CIFAR-10 statistics for CIFAR-100
        # validation, TF32 on CUDA as the authors' torch 1.10 (deterministic kernels unless --cudnn_benchmark)
        return Computation(loader="torchvision", eval_batch_size=config.batch_size, channels_last=False, sgd_foreach=None,
                           eval_autograd=True, end_save_overwrites_best=True, legacy_cifar100_val_norm=True,
                           deterministic=not config.cudnn_benchmark, tf32=device.type == "cuda")
    return Computation(loader=config.loader, eval_batch_size=config.eval_batch_size or default_eval_batch(device),
                       channels_last=not config.no_channels_last, legacy_cifar100_val_norm=config.legacy_cifar100_val_norm,
                       precision=resolve_precision(device, config.amp), compile=compiles(config),
                       defer_full_pass=config.loader == "device",  # its augmentation can be re-drawn for any epoch
                       deterministic=not config.cudnn_benchmark, tf32=device.type == "cuda" and not config.strict_fp32)


def default_eval_batch(device):
    return 1024 if device.type == "cuda" else 256


ORIGINAL_TEST_BATCH = 64  # the original's learning.py evaluates at batch 64


def resolve_evaluation(reference, eval_batch_size):
    """learning.py's test pass: the original's (PIL loader, batch 64, autograd on, TF32) with `reference`, else ours."""
    if reference:
        return Computation(loader="torchvision", eval_batch_size=ORIGINAL_TEST_BATCH, channels_last=False, sgd_foreach=None,
                           eval_autograd=True, end_save_overwrites_best=True, tf32=True)
    return Computation(eval_batch_size=eval_batch_size, channels_last=False)


def uses_pil_workers(config):
    """The PIL loader (the reference mode's too), whose random streams depend on the number of its workers."""
    return config.reference or config.loader == "torchvision"


NOT_COMPARED = ("print_freq",)  # changes what is printed, not what is computed
PIL_ONLY = ("num_workers",)  # the PIL workers' random streams depend on their number; the device loader has none


def run_args(config, compile_resolved, selection):
    """The settings that make a run what it is, as a resumed run (bkd.resume) and a relaunched grid (launch.grid)
    compare them: every training flag that changes the computation (torch.compile as resolved), plus `selection`,
    what picks the data (flags.data_selection)."""
    args = {f.name: getattr(config, f.name) for f in fields(config) if f.name not in NOT_COMPARED}
    if not uses_pil_workers(config):
        for name in PIL_ONLY:
            args.pop(name)
    args["compile"] = compile_resolved
    args.update(selection)
    return args


def custom_selection(keep_image_size, image_size=None):
    """What picks custom data besides the arrays (their fingerprint): the command line's and the API's alike. No label
    set, and an image size only for an image folder (None: does not apply)."""
    return {"dataset": "custom", "noise_type": None, "image_size": image_size, "keep_image_size": keep_image_size}


NOT_APPLICABLE = ("noise_type", "image_size")  # None where it does not apply (custom data); earlier versions recorded
# the flag's default there ("clean", 32), which is not compared


def differing_args(recorded, args):
    """(name, recorded value, this value) of every setting in both that differs, in `args`' order."""
    return [(key, recorded[key], value) for key, value in args.items() if key in recorded and recorded[key] != value
            and not (key in NOT_APPLICABLE and None in (recorded[key], value))]
