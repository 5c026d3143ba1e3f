"""Train teacher and student with Blind Knowledge Distillation (spec sections 2-5 and 7).

Parse the flags, load the data, open the run directory, hand them to bkd.run.fit with the
listeners that write the run's files (bkd.outputs.RunFiles) and, with --trace, its trace, and
say where the results are. Standard output carries the original's lines (0-based epochs); ours
start with `[bkd] `.
"""
import time

import torch

from bkd.config import TrainConfig, check_config, compiles, resolve_computation, uses_pil_workers
from bkd.method import first_detectable_epoch
from bkd.outputs import Listeners, RunFiles
from bkd.run import fit
from bkd.trace import TraceListener, TraceRecorder
from data.setup import check_same_data, load_run_data
from flags import base_parser, parse
from utils import checkpoint as ck
from utils import logfmt
from utils.errors import DataError, DivergedError, Interrupted, RunDirError, UsageError, first_line, run_cli
from utils.files import portable
from utils.runtime import machine_info, resolve_device

DEFAULTS = TrainConfig()  # the original's defaults, shared with the Python API (bkd.api)

# Flags whose value must match when a run is resumed: every flag that changes what the run computes.
RESUME_MUST_MATCH = (
    "dataset", "noise_type", "seed", "lr", "val_ratio", "n_epoch", "batch_size", "momentum", "weight_decay",
    "alpha1", "alpha2", "alpha3", "alpha4", "width", "subset", "lr_step", "noisy_val_freq", "detach_robust_target",
    "reference", "overfitting_epoch", "loader", "image_size", "eval_batch_size", "amp", "no_channels_last", "compile",
    "legacy_cifar100_val_norm",
)
RESUME_MUST_MATCH_TORCHVISION = ("num_workers",)  # the PIL workers' random streams depend on their number
PATH_FLAGS = ("data_root", "noise_path", "results_dir", "run_dir", "trace")


def build_parser():
    p = base_parser("Blind Knowledge Distillation training (teacher + student).")
    p.set_defaults(lr=DEFAULTS.lr, n_epoch=DEFAULTS.n_epoch, seed=DEFAULTS.seed, print_freq=DEFAULTS.print_freq,
                   num_workers=DEFAULTS.num_workers)  # the training script's (print_freq 100, not 50)
    p.add_argument("--batch_size", type=int, default=DEFAULTS.batch_size, help="training batch size")
    p.add_argument("--momentum", type=float, default=DEFAULTS.momentum, help="SGD momentum")
    p.add_argument("--weight_decay", type=float, default=DEFAULTS.weight_decay, help="SGD weight decay")
    p.add_argument("--clean_test_freq", type=int, default=DEFAULTS.clean_test_freq, help="report clean test accuracy at epochs e %% freq == 0 (and the last)")
    p.add_argument("--noisy_val_freq", type=int, default=DEFAULTS.noisy_val_freq, help="validate (and keep the best checkpoint) at epochs e %% freq == 0 (and the last)")
    p.add_argument("--alpha1", type=float, default=DEFAULTS.alpha1, help="robust-phase alpha of group 1 (most trusted)")
    p.add_argument("--alpha2", type=float, default=DEFAULTS.alpha2, help="robust-phase alpha of group 2")
    p.add_argument("--alpha3", type=float, default=DEFAULTS.alpha3, help="robust-phase alpha of group 3")
    p.add_argument("--alpha4", type=float, default=DEFAULTS.alpha4, help="robust-phase alpha of group 4 (flagged as noisy)")
    # Ours (README, 'Flags added to the original')
    p.add_argument("--width", type=int, default=DEFAULTS.width, help="channels of the first stage of PreResNet18 (64 = original)")
    p.add_argument("--lr_step", type=int, default=DEFAULTS.lr_step, help="StepLR step size in epochs (gamma 0.1)")
    p.add_argument("--subset", type=int, default=0, help="train on a stratified, seeded subset of this many images (0 = all)")
    p.add_argument("--resume", action="store_true", help="continue the run in the run directory from its last completed epoch")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in the run directory")
    p.add_argument("--loader", choices=("device", "torchvision"), default="device", help="input pipeline: batched on the device, or the original's PIL workers")
    p.add_argument("--eval_batch_size", type=int, default=DEFAULTS.eval_batch_size, help="batch size of evaluation passes (0 = 1024 on CUDA, 256 on CPU)")
    p.add_argument("--amp", action="store_true", help="mixed precision: bf16 autocast (CUDA: fp16 with gradient scaling where bf16 is missing; a CPU needs native bf16, AVX-512 BF16 or AMX); opt-in: it changed the outcome against fp32 on the quick preset")
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


def check_args(args):
    check_config(TrainConfig.from_namespace(args))  # the training values (shared with the Python API)
    if args.subset < 0:
        raise UsageError(f"--subset {args.subset} must be 0 (all images) or a positive count")
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite contradict each other; pick one")
    if args.overfitting_epoch is not None:
        acted = first_detectable_epoch(args.overfitting_epoch)
        if args.overfitting_epoch < 0 or acted >= args.n_epoch:
            raise UsageError(f"--overfitting_epoch {args.overfitting_epoch} would be acted upon after epoch {acted}, "
                             f"outside 0..{args.n_epoch - 1}; give an epoch below {args.n_epoch - 5} or more --n_epoch")


def log(message=""):
    print(message, flush=True)


def main(argv=None):
    args = parse(build_parser(), argv)
    check_args(args)
    device = resolve_device(args.device)
    run = ck.RunDir(ck.resolve_run_dir(args)).open(resume=args.resume, overwrite=args.overwrite)
    try:
        train(args, device, run)
    except KeyboardInterrupt:  # a second Ctrl-C: stop at once, and say what the directory holds
        raise Interrupted(f"interrupted; {run.describe()}") from None
    except (Interrupted, DivergedError, RunDirError) as err:
        raise type(err)(f"{err}; {run.describe()}") from None
    finally:
        run.close()


def train(args, device, run):
    """Data, files and trace around one bkd.run.fit."""
    time_start = time.time()  # (bkd.run.fit seeds python, numpy and torch before the first random draw)
    log(logfmt.device_line(device))
    log(str(device))
    config = TrainConfig.from_namespace(args)
    saved = load_resume_state(run, args) if args.resume and run.started else None
    data = load_run_data(args)
    for line in data.banner:
        log(line)
    fingerprint = data.fingerprint()
    if saved is not None:
        check_resumable_data(saved, fingerprint, run.file(ck.STATE))
    computation = resolve_computation(config, device)
    identity = {"args": resume_flags(args), "data": fingerprint, "num_threads": torch.get_num_threads()}
    flags = dict({k: portable(v) if k in PATH_FLAGS else v for k, v in vars(args).items()}, compile=computation.compile)
    files = RunFiles(run, data, config, computation.end_save_overwrites_best, identity, flags, machine_info(), log)
    trace = TraceListener(TraceRecorder(args.trace, resume_epoch=saved["epoch"] if saved else 0), args, data) if args.trace else None
    log(logfmt.ours(f"{args.dataset} {args.noise_type}, seed {args.seed}: {len(data.train_pos)} training / "
                    f"{len(data.val_pos)} validation / {len(data.labels)} detection images, PreResNet18 width {args.width}, "
                    f"device {device} ({'mixed precision' if computation.amp else 'fp32'}"
                    f"{', torch.compile' if computation.compile else ''}), {computation.name}, "
                    f"run directory {portable(run.path)}"))
    if saved is not None:
        log(logfmt.ours(f"resumed {portable(run.path)} after epoch {saved['epoch'] - 1} of 0..{args.n_epoch - 1}"))
    state = fit(config, data, device, Listeners(files, trace), log=log, resume=saved, resume_name=run.file(ck.STATE),
                time_start=time_start)
    log(logfmt.ours(f"finished: best noisy validation accuracy {state.best_val:.2f} % at epoch {state.best_epoch}; "
                    f"outputs in {portable(run.path)}"))


def resume_flags(args):
    config = TrainConfig.from_namespace(args)
    names = RESUME_MUST_MATCH + (RESUME_MUST_MATCH_TORCHVISION if uses_pil_workers(config) else ())
    return dict({k: getattr(args, k) for k in names}, compile=compiles(config))  # as resolved: on or off


def load_resume_state(run, args):
    """The resume state of a started run, checked against the flags before any data is loaded."""
    path = run.file(ck.STATE)
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise DataError(f"{path}: unreadable resume state ({first_line(err)}); start again with --overwrite") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("args"), dict) or not isinstance(saved.get("epoch"), int):
        raise DataError(f"{path}: not a resume state of this project; start again with --overwrite")
    flags = saved["args"]
    for key, value in resume_flags(args).items():
        if key in flags and flags[key] != value:
            raise UsageError(f"--{key} {value} differs from the run being resumed ({flags[key]}); resume with the same flags, "
                             "or start a new run with --overwrite")
    return saved


def check_resumable_data(saved, fingerprint, path):
    """Refuse, in one line, to resume a run on other data; a thread count may differ, with a notice."""
    recorded = saved.get("data")
    if recorded is None:
        log(logfmt.ours(f"{path} records no data fingerprint (an earlier version wrote it): the data is not checked"))
    else:
        check_same_data(recorded, fingerprint)
    threads = saved.get("num_threads")
    if threads is not None and threads != torch.get_num_threads():
        log(logfmt.ours(f"resuming with {torch.get_num_threads()} threads where the run used {threads}: it continues, but its "
                        "result is no longer bit-equal to an uninterrupted run (float sums round differently)"))


if __name__ == "__main__":
    run_cli(main)
