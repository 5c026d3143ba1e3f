"""Command-line flags shared by the three scripts: the original's flags with its defaults, plus ours."""
import argparse
import sys

from bkd.config import DEFAULTS, check_seed_and_split
from data.cifar import DATA_ROOT_ENV, DATASETS, default_data_root
from data.labels import NOISE_TYPES, check_noise_type
from utils.errors import EXIT_USAGE, UsageError

CUSTOM = "custom"  # --dataset custom: your own labelled images (data/custom.py)
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 1024  # 1024 px: 3 MB per image in memory; resize larger ones
EVAL_PRINT_FREQ = 50  # the original's learning.py and detection.py default (unused there); training's is DEFAULTS.print_freq

# Small-scale presets. Explicit flags still win over a preset's values.
PRESETS = {
    "default": {},
    # CPU-sized run of the real pipeline (README, 'Quick preset'): a stratified subset, a narrower
    # network, fewer epochs with the step decay at the same relative point.
    "quick": dict(subset=4000, width=16, n_epoch=40, lr_step=20, noisy_val_freq=5, clean_test_freq=5, print_freq=10),
}


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit code 2)."""

    def error(self, message):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def base_parser(description):
    """The flags every script of the original accepts, with the original's defaults."""
    p = Parser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--lr", type=float, default=DEFAULTS.lr, help="learning rate")
    p.add_argument("--val_ratio", type=float, default=DEFAULTS.val_ratio, help="share of training images held out as noisy validation set (0 = challenge setting)")
    p.add_argument("--noise_type", type=str, default="clean", help="label set: " + ", ".join(NOISE_TYPES))
    p.add_argument("--noise_path", type=str, default=None, help="path of CIFAR-10_human.pt / CIFAR-100_human.pt (default ./data/<file>, downloaded if missing)")
    p.add_argument("--dataset", type=str, default="cifar10", help=" or ".join(DATASETS) + ", or custom: your own images (README, 'Your own data')")
    p.add_argument("--n_epoch", type=int, default=DEFAULTS.n_epoch, help="number of epochs")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed, help="seed of python, numpy and torch")
    p.add_argument("--print_freq", type=int, default=EVAL_PRINT_FREQ, help="print a progress line every this many iterations")
    p.add_argument("--num_workers", type=int, default=DEFAULTS.num_workers, help="DataLoader workers (--loader torchvision only)")
    # Ours (README, 'Flags added to the original')
    p.add_argument("--data_root", type=str, default=default_data_root(), help=f"folder with CIFAR images (official folders or <dataset>.npz); ${DATA_ROOT_ENV} sets the default")
    p.add_argument("--device", type=str, default="auto", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N")
    p.add_argument("--results_dir", type=str, default="results", help="parent folder of run directories")
    p.add_argument("--run_dir", type=str, default=None, help="run directory (default <results_dir>/<dataset>_<noise_type>_seed_<seed>[_<preset>])")
    p.add_argument("--preset", choices=sorted(PRESETS), default="default", help="settings bundle; 'quick' = CPU-sized run (README)")
    p.add_argument("--no_download", action="store_true", help="never download images or label files; fail with a message instead")
    p.add_argument("--data_file", type=str, default=None,
                   help="--dataset custom: an .npz array file or an image folder (default <data_root>/custom.npz; README, 'Your own data')")
    p.add_argument("--image_size", type=int, default=32, help="--dataset custom with an image folder: resize images to this size")
    p.add_argument("--reference", action="store_true",
                   help="the authors' computation bit for bit (PIL loader workers, fp32 NCHW, their SGD call and batch sizes; README, 'Reference mode')")
    return p


def parse(parser, argv=None):
    """Parse with the chosen preset's values as defaults, then check values shared by all scripts."""
    known, _ = parser.parse_known_args(argv)
    parser.set_defaults(**{k: v for k, v in PRESETS[known.preset].items() if _has(parser, k)})
    args = parser.parse_args(argv)
    if args.dataset not in DATASETS and args.dataset != CUSTOM:
        raise UsageError(f"--dataset {args.dataset!r} is unknown; use one of {', '.join(DATASETS)} or {CUSTOM}")
    if args.dataset != CUSTOM:  # custom data has its given labels only: --noise_type does not apply
        check_noise_type(args.dataset, args.noise_type)
    if not MIN_IMAGE_SIZE <= args.image_size <= MAX_IMAGE_SIZE:
        raise UsageError(f"--image_size {args.image_size} must be between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE} pixels")
    check_seed_and_split(args.seed, args.val_ratio)
    return args


def _has(parser, dest):
    return any(action.dest == dest for action in parser._actions)
