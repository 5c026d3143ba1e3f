"""Command-line flags shared by the three scripts: the original's flags with its defaults, plus ours."""

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any, NoReturn

from bkd.config import DEFAULTS, TrainConfig, check_values, value_type
from bkd.data.cifar import DATA_ROOT_ENV, DATASETS, default_data_root
from bkd.data.datasets import CUSTOM, DataSelection
from bkd.data.labels import NOISE_TYPES, check_noise_type
from bkd.rundir import run_dir_name
from bkd.utils.errors import EXIT_USAGE, UsageError

MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 1024  # 1024 px: 3 MB per image in memory; resize larger ones
EVAL_PRINT_FREQ = (
    50  # the original's learning.py and detection.py default (unused there); training's is DEFAULTS.print_freq
)

# Small-scale presets. Explicit flags still win over a preset's values.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    # CPU-sized run of the real pipeline (docs/results.md): a stratified subset, a narrower
    # network, fewer epochs with the step decay at the same relative point.
    "quick": dict(subset=4000, width=16, n_epoch=40, lr_step=20, noisy_val_freq=5, clean_test_freq=5, print_freq=10),
}


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit code 2), which knows its flags' names and which of them are TrainConfig's."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.option_names: set[str] = set()  # every --flag it accepts (the launcher checks the flags it passes on)
        self.config_defaults: dict[str, Any] = {}  # TrainConfig field -> this script's default (presets, flags first)
        super().__init__(*args, **kwargs)

    def add_argument(self, *names: Any, **kwargs: Any) -> argparse.Action:
        self.option_names.update(name for name in names if name.startswith("-"))
        return super().add_argument(*names, **kwargs)

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def add_config_flags(parser: Parser, names: Sequence[str], defaults: Mapping[str, Any] | None = None) -> None:
    """TrainConfig's fields `names` as flags, each with its type and help text from the dataclass (bkd/config.py). The
    flags' own default is argparse.SUPPRESS: parse() fills what was not given from the preset, then the default."""
    config_fields = {f.name: f for f in fields(TrainConfig)}
    for name in names:
        f = config_fields[name]
        default = (defaults or {}).get(name, f.default)
        parser.config_defaults[name] = default
        help = f.metadata["help"] + "".join(
            f" (preset {preset}: {values[name]})" for preset, values in PRESETS.items() if name in values
        )
        if default is not None and default is not False:
            help += f" (default: {default})"
        kind = value_type(f)
        if kind is bool and f.default is None:  # on (--name), off (--no_name), or not given: the run decides
            parser.add_argument(f"--{name}", action="store_const", const=True, default=argparse.SUPPRESS, help=help)
            parser.add_argument(
                f"--no_{name}",
                dest=name,
                action="store_const",
                const=False,
                default=argparse.SUPPRESS,
                help=f"the opposite of --{name}",
            )
        elif kind is bool:
            parser.add_argument(f"--{name}", action="store_true", default=argparse.SUPPRESS, help=help)
        else:
            parser.add_argument(
                f"--{name}",
                type=kind,
                default=argparse.SUPPRESS,
                help=help,
                choices=getattr(f.metadata["check"], "choices", None),
            )


# every script of the original
COMMON = ("lr", "val_ratio", "n_epoch", "seed", "print_freq", "num_workers", "reference")


def base_parser(description: str, prog: str | None = None, print_freq: int = EVAL_PRINT_FREQ) -> Parser:
    """The flags every script of the original accepts, with the original's defaults."""
    p = Parser(prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_config_flags(p, COMMON, {"print_freq": print_freq})
    p.add_argument("--noise_type", type=str, default="clean", help="label set: " + ", ".join(NOISE_TYPES))
    p.add_argument(
        "--noise_path",
        type=str,
        default=None,
        help="path of CIFAR-10_human.pt / CIFAR-100_human.pt (default ./data/<file>, downloaded if missing)",
    )
    p.add_argument(
        "--dataset",
        type=str,
        default="cifar10",
        help=" or ".join(DATASETS) + ", or custom: your own images (docs/custom-data.md)",
    )
    # Ours (README, 'The three scripts')
    p.add_argument(
        "--data_root",
        type=str,
        default=default_data_root(),
        help=f"folder with CIFAR images (official folders or <dataset>.npz); ${DATA_ROOT_ENV} sets the default",
    )
    p.add_argument("--device", type=str, default="auto", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N")
    p.add_argument("--results_dir", type=str, default="results", help="parent folder of run directories")
    p.add_argument(
        "--run_dir",
        type=str,
        default=None,
        help="run directory (default <results_dir>/<dataset>_<noise_type>_seed_<seed>[_<preset>])",
    )
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="default",
        help="settings bundle; 'quick' = CPU-sized run (README, 'The three scripts')",
    )
    p.add_argument(
        "--no_download", action="store_true", help="never download images or label files; fail with a message instead"
    )
    p.add_argument(
        "--data_file",
        type=str,
        default=None,
        help="--dataset custom: an .npz array file or an image folder (default <data_root>/custom.npz; "
        "docs/custom-data.md)",
    )
    p.add_argument(
        "--image_size", type=int, default=32, help="--dataset custom with an image folder: resize images to this size"
    )
    p.add_argument(
        "--corrections",
        type=str,
        default=None,
        help="a corrections file (CSV: id or position, new_label, given_label) applied before training: new labels, "
        "images removed; the review page's Export writes one (docs/custom-data.md)",
    )
    p.add_argument(
        "--keep_image_size",
        action="store_true",
        help="--dataset custom: train images smaller than 32 pixels at their size (by default they are resized to 32)",
    )
    return p


def training_parser() -> Parser:
    """blind_knowledge_dist_training.py's flags: every TrainConfig field, and ours (the launcher checks with it)."""
    # the training script's (100; the evaluations' is 50, as the original)
    p = base_parser(
        "Blind Knowledge Distillation training (teacher + student).",
        prog="blind_knowledge_dist_training.py",
        print_freq=DEFAULTS.print_freq,
    )
    add_config_flags(p, [f.name for f in fields(TrainConfig) if f.name not in COMMON])
    p.add_argument(
        "--resume", action="store_true", help="continue the run in the run directory from its last completed epoch"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in the run directory")
    p.add_argument(
        "--trace", type=str, default=None, help="write the run's trace (golden-trace schema) to this JSON file"
    )
    return p


def training_config(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of parsed flags (the evaluations parse some of its fields: the others keep their defaults)."""
    return TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)})


def data_selection(args: argparse.Namespace) -> DataSelection:
    """The DataSelection of parsed flags: the one value that picks a run's data (bkd.data.datasets)."""
    return DataSelection(
        dataset=args.dataset,
        noise_type=args.noise_type,
        data_root=args.data_root,
        noise_path=args.noise_path,
        download=not args.no_download,
        data_file=args.data_file,
        image_size=args.image_size,
        keep_image_size=args.keep_image_size,
        corrections=args.corrections,
    )


def run_dir_path(args: argparse.Namespace) -> str:
    """--run_dir, or <results_dir>/<dataset>_<noise_type>_seed_<seed>[_<preset>] (custom data: named after its file or
    folder, e.g. results/custom_pets_seed_0)."""
    if args.run_dir:
        return args.run_dir
    labels = args.noise_type
    if args.dataset == CUSTOM:
        labels = os.path.splitext(os.path.basename(os.path.normpath(args.data_file or "custom.npz")))[0]
    return os.path.join(args.results_dir, run_dir_name(args.dataset, labels, args.seed, args.preset))


def parse(parser: Parser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse once; fill the TrainConfig values not given from the chosen preset, then the script's defaults; check the
    values every script takes."""
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    for name, default in parser.config_defaults.items():
        if not hasattr(args, name):
            setattr(args, name, preset.get(name, default))
    if args.dataset not in DATASETS and args.dataset != CUSTOM:
        raise UsageError(f"--dataset {args.dataset!r} is unknown; use one of {', '.join(DATASETS)} or {CUSTOM}")
    if args.dataset != CUSTOM:
        check_noise_type(args.dataset, args.noise_type)
    elif args.noise_type != "clean":  # (the flag's default)
        raise UsageError(
            f"--noise_type {args.noise_type} picks a CIFAR-N label set; --dataset custom trains on the "
            "data's own labels: drop it"
        )
    if not MIN_IMAGE_SIZE <= args.image_size <= MAX_IMAGE_SIZE:
        raise UsageError(f"--image_size {args.image_size} must be between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE} pixels")
    check_values({name: getattr(args, name) for name in parser.config_defaults})
    return args
