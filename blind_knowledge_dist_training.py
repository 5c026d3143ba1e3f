"""Train teacher and student with Blind Knowledge Distillation (spec sections 2-5 and 7).

Parse the flags, load the data, open the run directory, hand them to bkd.run.fit with the
listeners that write the run's files (bkd.outputs.RunFiles) and, with --trace, its trace, and
say where the results are. Standard output carries the original's lines (0-based epochs); ours
start with `[bkd] `.
"""
import time

from bkd import resume
from bkd import rundir as rd
from bkd.config import DEFAULTS, TrainConfig, check_config, resolve_computation
from bkd.outputs import Listeners, RunFiles, writes_in_background
from bkd.run import fit
from bkd.trace import TraceListener, TraceRecorder
from data.setup import load_run_data
from flags import base_parser, parse
from utils import logfmt
from utils.errors import DivergedError, Interrupted, OutOfMemory, RunDirError, UsageError, run_cli
from utils.files import portable
from utils.runtime import machine_info, resolve_device

PATH_FLAGS = ("data_root", "noise_path", "results_dir", "run_dir", "trace")


def build_parser():
    p = base_parser("Blind Knowledge Distillation training (teacher + student).")
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
    # Ours (README, 'Flags added to the original')
    p.add_argument("--width", type=int, default=DEFAULTS.width, help="channels of the first stage of PreResNet18 (64 = original)")
    p.add_argument("--lr_step", type=int, default=DEFAULTS.lr_step, help="StepLR step size in epochs (gamma 0.1)")
    p.add_argument("--subset", type=int, default=DEFAULTS.subset, help="train on a stratified, seeded subset of this many images (0 = all)")
    p.add_argument("--resume", action="store_true", help="continue the run in the run directory from its last completed epoch")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in the run directory")
    p.add_argument("--loader", choices=("device", "torchvision"), default=DEFAULTS.loader, help="input pipeline: batched on the device, or the original's PIL workers")
    p.add_argument("--eval_batch_size", type=int, default=DEFAULTS.eval_batch_size, help="batch size of evaluation passes (0 = 1024 on CUDA, 256 on CPU)")
    p.add_argument("--amp", action="store_true", help="mixed precision: bf16 autocast where the device has bf16 natively (CUDA compute capability 8.0+; a CPU with AVX-512 BF16 or AMX), fp16 with gradient scaling on older GPUs; opt-in: it changed the outcome against fp32 on the quick preset")
    p.add_argument("--tf32", action="store_true", help="CUDA: TF32 convolutions and matrix products (faster on Ampere and newer, 10-bit mantissa products) instead of strict fp32")
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


def check_args(args):
    check_config(TrainConfig.from_namespace(args))  # the training values (shared with the Python API)
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite contradict each other; pick one")


def log(message=""):
    print(message, flush=True)


def main(argv=None):
    args = parse(build_parser(), argv)
    check_args(args)
    device = resolve_device(args.device)
    run = rd.RunDir(rd.resolve_run_dir(args)).open(resume=args.resume, overwrite=args.overwrite)
    try:
        train(args, device, run)
    except KeyboardInterrupt:  # a second Ctrl-C: stop at once, and say what the directory holds
        raise Interrupted(f"interrupted; {run.describe()}") from None
    except (Interrupted, DivergedError, RunDirError, OutOfMemory) as err:
        raise type(err)(f"{err}; {run.describe()}") from None
    finally:
        run.close()


def train(args, device, run):
    """Data, files and trace around one bkd.run.fit."""
    time_start = time.time()  # (bkd.run.fit seeds python, numpy and torch before the first random draw)
    log(logfmt.device_line(device))
    log(str(device))
    config = TrainConfig.from_namespace(args)
    computation = resolve_computation(config, device)  # the one resolution of the run's computation
    path = run.file(rd.STATE)
    saved = resume.load(path) if args.resume and run.started else None
    data = load_run_data(args)
    for line in data.banner:
        log(line)
    identity = resume.identity(config, computation, data, device, selection(args))
    if saved is not None:
        resume.check(saved, identity, path, log=log)
    flags = dict({k: portable(v) if k in PATH_FLAGS else v for k, v in vars(args).items()}, compile=computation.compile,
                 precision=computation.precision, deterministic=computation.deterministic, tf32=computation.tf32)
    files = RunFiles(run, data, config, identity, flags, machine_info(device), log, background=writes_in_background(device))
    trace = TraceListener(TraceRecorder(args.trace, resume_epoch=saved["epoch"] if saved else 0), args, data) if args.trace else None
    log(logfmt.ours(setup_line(args, data, device, computation, run)))
    if saved is not None:
        log(logfmt.ours(f"resumed {portable(run.path)} after epoch {saved['epoch'] - 1} of 0..{args.n_epoch - 1}"))
    state = fit(config, data, device, computation, Listeners(files, trace), log=log, resume=saved, resume_name=path,
                time_start=time_start)
    log(logfmt.ours(f"finished: best noisy validation accuracy {state.best_val:.2f} % at epoch {state.best_epoch}; "
                    f"outputs in {portable(run.path)}"))


def selection(args):
    """What picks a run's data besides the training flags (bkd.resume.run_args)."""
    return {"dataset": args.dataset, "noise_type": args.noise_type, "image_size": args.image_size}


def setup_line(args, data, device, computation, run):
    arithmetic = [computation.precision if computation.precision == "fp32" else f"{computation.precision} mixed precision"]
    if device.type == "cuda":
        arithmetic += ["TF32" if computation.tf32 else "no TF32",
                       "deterministic kernels" if computation.deterministic else "cudnn.benchmark (nondeterministic)"]
    if computation.compile:
        arithmetic.append("torch.compile")
    return (f"{args.dataset} {args.noise_type}, seed {args.seed}: {len(data.train_pos)} training / {len(data.val_pos)} "
            f"validation / {len(data.labels)} detection images, PreResNet18 width {args.width}, device {device} "
            f"({', '.join(arithmetic)}), {computation.name}, run directory {portable(run.path)}")


if __name__ == "__main__":
    run_cli(main)
