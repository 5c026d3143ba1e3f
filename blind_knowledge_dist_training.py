"""Train teacher and student with Blind Knowledge Distillation (arXiv 2211.11355; docs/method.md).

Parse the flags, load the data, open the run directory, hand them to bkd.run.fit with the
outputs that write the run's files (bkd.outputs.RunFiles) and, with --trace, its trace, and
say where the results are. Standard output carries the original's lines (0-based epochs); ours
start with `[bkd] `.
"""
if __name__ == "__main__":  # Ctrl-C while the libraries load: one line, not a traceback (utils/errors.py)
    from bkd.utils.errors import interrupt_quietly_while_starting

    interrupt_quietly_while_starting()

import os
import time

from bkd import resume
from bkd import rundir as rd
from bkd.config import TrainConfig, check_config, resolve_computation
from bkd.engine import StopFlag
from bkd.outputs import RunFiles
from bkd.run import Job, Saved, fit
from bkd.trace import Trace
from bkd.data.custom import data_file
from bkd.data.datasets import load_run_data
from flags import data_selection, parse, training_parser
from bkd.utils import logfmt
from bkd.utils.errors import OUTPUT_CLOSED, DivergedError, Interrupted, OutOfMemory, OutputClosed, RunDirError, UsageError, run_cli
from bkd.utils.files import portable
from bkd.utils.devices import resolve_device

PATH_FLAGS = ("data_root", "noise_path", "results_dir", "run_dir", "trace")


def build_parser():
    return training_parser()


def check_args(args):
    check_config(TrainConfig.from_namespace(args))  # the training values (shared with the Python API)
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite contradict each other; pick one")


def log(message=""):
    try:
        print(message, flush=True)
    except BrokenPipeError:
        raise
    except OSError as err:  # a log redirected to a full or failing file system (`> /dev/full`)
        raise RunDirError(f"cannot write standard output ({err.strerror}): its file system is full or failing") from None


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
    except BrokenPipeError:  # `... | head`: stop as a Unix tool does, saying on stderr what the directory holds
        raise OutputClosed(f"{OUTPUT_CLOSED}; {run.describe()}") from None
    finally:
        run.close()


def train(args, device, run):
    """Data, files and trace around one bkd.run.fit."""
    started = time.time()  # (bkd.run.fit seeds python, numpy and torch before the first random draw)
    log(logfmt.device_line(device))
    log(str(device))
    config = TrainConfig.from_namespace(args)
    computation = resolve_computation(config, device)  # the one resolution of the run's computation
    path = run.file(rd.STATE)
    saved = resume.load(path) if args.resume and run.started else None
    data = load_run_data(args)
    for line in data.banner:
        log(line)
    job = Job(config, data, device, computation, log, started)
    identity = resume.identity(job, data_selection(args))
    if saved is not None:
        resume.check(saved, identity, path, log=log)
    flags = dict({k: portable(v) if k in PATH_FLAGS else v for k, v in vars(args).items()}, compile=computation.compile,
                 precision=computation.precision, deterministic=computation.deterministic, tf32=computation.tf32)
    outputs = [RunFiles(run, job, identity, flags)]
    if args.trace:
        outputs.append(Trace(args.trace, args, data))
    log(logfmt.ours(setup_line(args, job, run)))
    if saved is not None:
        log(logfmt.ours(f"resumed {portable(run.path)} after epoch {saved['epoch'] - 1} of 0..{args.n_epoch - 1}"))
    state = fit(job, outputs, resume=saved and Saved(path, saved), stop=StopFlag(run.describe).install())
    log(logfmt.ours(f"finished: best noisy validation accuracy {state.best_val:.2f} % at epoch {state.best_epoch}; "
                    f"outputs in {portable(run.path)}"))


def setup_line(args, job, run):
    data, device, computation = job.data, job.device, job.computation
    arithmetic = [computation.precision if computation.precision == "fp32" else f"{computation.precision} mixed precision"]
    if device.type == "cuda":
        arithmetic += ["TF32" if computation.tf32 else "no TF32",
                       "deterministic kernels" if computation.deterministic else "cudnn.benchmark (nondeterministic)"]
    if computation.compile:
        arithmetic.append("torch.compile")
    labels = (f"{args.dataset} {args.noise_type}" if args.dataset != "custom" else
              f"custom data {portable(os.path.abspath(data_file(args)))} (its given labels)")
    return (f"{labels}, seed {args.seed}: {len(data.train_pos)} training / {len(data.val_pos)} "
            f"validation / {len(data.labels)} detection images, PreResNet18 width {args.width}, device {device} "
            f"({', '.join(arithmetic)}), {computation.name}, run directory {portable(run.path)}")


if __name__ == "__main__":
    run_cli(main)
