"""Command-line flags shared by the three scripts: the original's flags with its defaults, plus ours."""
import argparse
import os
import sys

from bkd.config import DEFAULTS, check_seed_and_split, custom_selection
from bkd.data.cifar import DATA_ROOT_ENV, DATASETS, default_data_root
from bkd.data.labels import NOISE_TYPES, check_noise_type
from bkd.utils.errors import EXIT_USAGE, UsageError

CUSTOM = "custom"  # --dataset custom: your own labelled images (bkd/data/custom.py)
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 1024  # 1024 px: 3 MB per image in memory; resize larger ones
EVAL_PRINT_FREQ = 50  # the original's learning.py and detection.py default (unused there); training's is DEFAULTS.print_freq

# Small-scale presets. Explicit flags still win over a preset's values.
PRESETS = {
    "default": {},
    # CPU-sized run of the real pipeline (docs/results.md): a stratified subset, a narrower
    # network, fewer epochs with the step decay at the same relative point.
    "quick": dict(subset=4000, width=16, n_epoch=40, lr_step=20, noisy_val_freq=5, clean_test_freq=5, print_freq=10),
}


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit code 2)."""

    def error(self, message):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def base_parser(description, prog=None):
    """The flags every script of the original accepts, with the original's defaults."""
    p = Parser(prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--lr", type=float, default=DEFAULTS.lr, help="learning rate")
    p.add_argument("--val_ratio", type=float, default=DEFAULTS.val_ratio, help="share of training images held out as noisy validation set (0 = challenge setting)")
    p.add_argument("--noise_type", type=str, default="clean", help="label set: " + ", ".join(NOISE_TYPES))
    p.add_argument("--noise_path", type=str, default=None, help="path of CIFAR-10_human.pt / CIFAR-100_human.pt (default ./data/<file>, downloaded if missing)")
    p.add_argument("--dataset", type=str, default="cifar10", help=" or ".join(DATASETS) + ", or custom: your own images (docs/custom-data.md)")
    p.add_argument("--n_epoch", type=int, default=DEFAULTS.n_epoch, help="number of epochs")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed, help="seed of python, numpy and torch")
    p.add_argument("--print_freq", type=int, default=EVAL_PRINT_FREQ, help="print a progress line every this many iterations")
    p.add_argument("--num_workers", type=int, default=DEFAULTS.num_workers, help="DataLoader workers (--loader torchvision only)")
    # Ours (README, 'The three scripts')
    p.add_argument("--data_root", type=str, default=default_data_root(), help=f"folder with CIFAR images (official folders or <dataset>.npz); ${DATA_ROOT_ENV} sets the default")
    p.add_argument("--device", type=str, default="auto", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N")
    p.add_argument("--results_dir", type=str, default="results", help="parent folder of run directories")
    p.add_argument("--run_dir", type=str, default=None, help="run directory (default <results_dir>/<dataset>_<noise_type>_seed_<seed>[_<preset>])")
    p.add_argument("--preset", choices=sorted(PRESETS), default="default", help="settings bundle; 'quick' = CPU-sized run (README, 'The three scripts')")
    p.add_argument("--no_download", action="store_true", help="never download images or label files; fail with a message instead")
    p.add_argument("--data_file", type=str, default=None,
                   help="--dataset custom: an .npz array file or an image folder (default <data_root>/custom.npz; docs/custom-data.md)")
    p.add_argument("--image_size", type=int, default=32, help="--dataset custom with an image folder: resize images to this size")
    p.add_argument("--keep_image_size", action="store_true",
                   help="--dataset custom: train images smaller than 32 pixels at their size (by default they are resized to 32)")
    p.add_argument("--reference", action="store_true",
                   help="the authors' computation bit for bit (PIL loader workers, fp32 NCHW, their SGD call and batch sizes; docs/reference-mode.md)")
    return p


def training_parser():
    """blind_knowledge_dist_training.py's flags (the launcher checks the flags it passes on with it)."""
    p = base_parser("Blind Knowledge Distillation training (teacher + student).", prog="blind_knowledge_dist_training.py")
    p.set_defaults(print_freq=DEFAULTS.print_freq)  # the training script's (100; the evaluations' is 50, as the original)
    p.add_argument("--batch_size", type=int, default=DEFAULTS.batch_size, help="training batch size")
    p.add_argument("--momentum", type=float, default=DEFAULTS.momentum, help="SGD momentum")
    p.add_argument("--weight_decay", type=float, default=DEFAULTS.weight_decay, help="SGD weight decay")
    p.add_argument("--clean_test_freq", type=int, default=DEFAULTS.clean_test_freq, help="report clean test accuracy at epochs e %% freq == 0 (and the last)")
    p.add_argument("--noisy_val_freq", type=int, default=DEFAULTS.noisy_val_freq, help="validate (and keep the best checkpoint) at epochs e %% freq == 0 (and the last)")
    p.add_argument("--alpha1", type=float, default=DEFAULTS.alpha1, help="robust-phase alpha of group 1 (most trusted)")
    p.add_argument("--alpha2", type=float, default=DEFAULTS.alpha2, help="robust-phase alpha of group 2")
    p.add_argument("--alpha3", type=float, default=DEFAULTS.alpha3, help="robust-phase alpha of group 3")
    p.add_argument("--alpha4", type=float, default=DEFAULTS.alpha4, help="robust-phase alpha of group 4 (flagged as noisy)")
    # Ours (README, 'The three scripts')
    p.add_argument("--width", type=int, default=DEFAULTS.width, help="channels of the first stage of PreResNet18 (64 = original)")
    p.add_argument("--lr_step", type=int, default=DEFAULTS.lr_step, help="StepLR step size in epochs (gamma 0.1)")
    p.add_argument("--subset", type=int, default=DEFAULTS.subset, help="train on a stratified, seeded subset of this many images (0 = all)")
    p.add_argument("--resume", action="store_true", help="continue the run in the run directory from its last completed epoch")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in the run directory")
    p.add_argument("--loader", choices=("device", "torchvision"), default=DEFAULTS.loader, help="input pipeline: batched on the device, or the original's PIL workers")
    p.add_argument("--eval_batch_size", type=int, default=DEFAULTS.eval_batch_size, help="batch size of evaluation passes (0 = 1024 on CUDA, 256 on CPU)")
    p.add_argument("--amp", action="store_true", help="mixed precision: bf16 autocast where the device has bf16 natively (CUDA compute capability 8.0+; a CPU with AVX-512 BF16 or AMX), fp16 with gradient scaling on older GPUs; opt-in: it changed the outcome against fp32 on the quick preset")
    p.add_argument("--strict_fp32", action="store_true", help="CUDA: IEEE fp32 convolutions and matrix products instead of TF32 (the default on CUDA, as PyTorch's and the authors' torch: 10-bit mantissa products, several times faster on Ampere and newer)")
    p.add_argument("--tf32", action="store_true", help=argparse.SUPPRESS)  # retired: TF32 became the default (parse says so)
    p.add_argument("--cudnn_benchmark", action="store_true", help="CUDA: cuDNN's autotuned kernels (faster, nondeterministic: runs are no longer bit-reproducible, resume no longer bit-exact) instead of deterministic ones")
    p.add_argument("--no_channels_last", action="store_true", help="keep the NCHW memory format (channels-last is faster on CUDA and CPU)")
    p.add_argument("--compile", action="store_const", const=True, default=DEFAULTS.compile,
                   help="torch.compile both networks (default: from --width 16, where it pays; eager if it fails)")
    p.add_argument("--no_compile", dest="compile", action="store_const", const=False, help="run the networks eager")
    p.add_argument("--overfitting_epoch", type=int, default=None,
                   help="skip the confidence rule and split at this (0-based) epoch, acted upon when the rule could first have found it")
    p.add_argument("--trace", type=str, default=None, help="write the run's trace (golden-trace schema) to this JSON file")
    p.add_argument("--detach_robust_target", action="store_true", help="not the original: no gradient from the robust target into the student")
    p.add_argument("--legacy_cifar100_val_norm", action="store_true", help="normalise the CIFAR-100 validation set with CIFAR-10 statistics, as the original")
    return p


def data_selection(args):
    """What picks a run's data besides the training flags (bkd.config.run_args), as the Python API records it too:
    custom data has no label set, and only an image folder is resized to --image_size (None: does not apply)."""
    if args.dataset != CUSTOM:
        return {"dataset": args.dataset, "noise_type": args.noise_type, "image_size": args.image_size,
                "keep_image_size": args.keep_image_size}
    from bkd.data.custom import data_file

    return custom_selection(args.keep_image_size, args.image_size if os.path.isdir(data_file(args)) else None)


def parse(parser, argv=None):
    """Parse with the chosen preset's values as defaults, then check values shared by all scripts."""
    known, _ = parser.parse_known_args(argv)
    parser.set_defaults(**{k: v for k, v in PRESETS[known.preset].items() if _has(parser, k)})
    args = parser.parse_args(argv)
    if args.dataset not in DATASETS and args.dataset != CUSTOM:
        raise UsageError(f"--dataset {args.dataset!r} is unknown; use one of {', '.join(DATASETS)} or {CUSTOM}")
    if args.dataset != CUSTOM:
        check_noise_type(args.dataset, args.noise_type)
    elif args.noise_type != "clean":  # (the flag's default)
        raise UsageError(f"--noise_type {args.noise_type} picks a CIFAR-N label set; --dataset custom trains on the "
                         "data's own labels: drop it")
    if not MIN_IMAGE_SIZE <= args.image_size <= MAX_IMAGE_SIZE:
        raise UsageError(f"--image_size {args.image_size} must be between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE} pixels")
    check_seed_and_split(args.seed, args.val_ratio)
    if getattr(args, "tf32", False):
        raise UsageError("--tf32: TF32 is the default on CUDA now; drop --tf32 (--strict_fp32 computes in IEEE fp32)")
    return args


def _has(parser, dest):
    return any(action.dest == dest for action in parser._actions)
