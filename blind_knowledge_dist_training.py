"""Train teacher and student with Blind Knowledge Distillation (arXiv 2211.11355; docs/method.md).

Parse the flags into the training values and the data selection, open the run directory, load the data, hand the
run to bkd.run.fit with the outputs that write its files (bkd.outputs.RunFiles) and, with --trace, its trace, and
say where the results are. Standard output carries the original's lines (0-based epochs); ours start with `[bkd] `.
docs/layout.md follows this file to the first training iteration.
"""

if __name__ == "__main__":  # Ctrl-C while the libraries load: one line, not a traceback (utils/errors.py)
    from bkd.utils.stops import interrupt_quietly_while_starting

    interrupt_quietly_while_starting()

import argparse
import os
import time
from collections.abc import Sequence

import torch

from bkd import resume
from bkd.config import TrainConfig, check_config, resolve_computation
from bkd.data.datasets import input_dataset
from bkd.outputs import RunFiles
from bkd.run import Job, Saved, fit
from bkd.rundir import STATE, RunDir
from bkd.trace import Trace
from bkd.utils import logfmt
from bkd.utils.devices import resolve_device
from bkd.utils.errors import (
    OUTPUT_CLOSED,
    DivergedError,
    Interrupted,
    OutOfMemory,
    OutputClosed,
    RunDirError,
    UsageError,
    run_cli,
)
from bkd.utils.files import portable, shown
from bkd.utils.stops import StopFlag, held
from flags import Parser, data_selection, parse, run_dir_path, training_config, training_parser

# recorded in metrics.json as the project's relative paths (utils.files.portable), whatever folder the run started in
PATH_FLAGS = ("data_root", "noise_path", "results_dir", "run_dir", "trace", "data_file", "corrections")


def build_parser() -> Parser:
    return training_parser()


def log(message: str = "") -> None:
    """A line of standard output (the run's training.log), flushed; a failing file system is one line (exit 4)."""
    try:
        print(message, flush=True)
    except BrokenPipeError:
        raise
    except OSError as err:  # a log redirected to a full or failing file system (`> /dev/full`)
        raise RunDirError(
            f"cannot write standard output ({err.strerror}): its file system is full or failing"
        ) from None


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(build_parser(), argv)
    config = training_config(args)
    check_config(config)  # the training values (shared with the Python API)
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite contradict each other; pick one")
    device = resolve_device(args.device)
    run = RunDir(run_dir_path(args)).open(resume=args.resume, overwrite=args.overwrite)
    try:
        train(args, config, device, run)
    except BaseException as err:
        raise stopped(err, run) from None
    run.close()


def stopped(err: BaseException, run: RunDir) -> BaseException:
    """What a run that stopped with `err` reports: its directory put in order (an --overwritten run back in place of a
    new one that completed no epoch) and said in the line, whatever signals come meanwhile (the process is stopping
    already: they are dropped)."""
    with held(drop=True):
        run.close()
        holds = run.describe()
    if isinstance(err, KeyboardInterrupt):  # a second signal, or one before the run started: stopped where it was
        return Interrupted(f"{err or 'interrupted'}; {holds}")
    if isinstance(err, (Interrupted, DivergedError, RunDirError, OutOfMemory)):
        return type(err)(f"{err}; {holds}")
    if isinstance(err, BrokenPipeError):  # `... | head`: stop as a Unix tool does, saying on stderr what it holds
        return OutputClosed(f"{OUTPUT_CLOSED}; {holds}")
    return err


def train(args: argparse.Namespace, config: TrainConfig, device: torch.device, run: RunDir) -> None:
    """Data, resume state, files and trace around one bkd.run.fit."""
    started = time.time()  # (bkd.run.fit seeds python, numpy and torch before the first random draw)
    # SIGINT/SIGTERM from here on: a stop that keeps what the run completed, saying what the directory holds
    stop = StopFlag(run.describe).install()
    stop.phase = "while loading the data"
    log(logfmt.device_line(device))
    log(str(device))
    selection = data_selection(args)
    data = input_dataset(selection, config)
    for line in data.banner:
        log(line)
    job = Job(config, data, device, resolve_computation(config, device), log, started)
    identity = resume.identity(job, selection)
    saved = resume.load(run.file(STATE)) if args.resume and run.started else None
    if saved is not None:
        resume.check(saved, identity, run.file(STATE), log=log)
    flags = dict(
        {k: recorded_path(v) if k in PATH_FLAGS else v for k, v in vars(args).items()},
        compile=job.computation.compile,
        precision=job.computation.precision,
        deterministic=job.computation.deterministic,
        tf32=job.computation.tf32,
    )
    outputs = [RunFiles(run, job, identity, flags)] + (
        [Trace(args.trace, vars(args), selection, data)] if args.trace else []
    )
    log(logfmt.ours(setup_line(args, job, run)))
    if saved is not None:
        log(logfmt.ours(f"resumed {shown(run.path)} after epoch {saved['epoch'] - 1} of 0..{config.n_epoch - 1}"))
    state = fit(job, outputs, resume=Saved(run.file(STATE), saved) if saved else None, stop=stop)
    log(
        logfmt.ours(
            f"finished: best noisy validation accuracy {state.best_val:.2f} % at epoch {state.best_epoch}; "
            f"outputs in {shown(run.path)}"
        )
    )


def recorded_path(path: str | None) -> str | None:
    """A path flag as metrics.json records it: relative to the project (python -m bkd.review finds it from there)."""
    return None if path is None else portable(os.path.abspath(os.path.expanduser(path)))


def setup_line(args: argparse.Namespace, job: Job, run: RunDir) -> str:
    """The [bkd] line saying what this run trains on, how and where."""
    data, device, computation, selection = job.data, job.device, job.computation, data_selection(args)
    arithmetic = [
        computation.precision if computation.precision == "fp32" else f"{computation.precision} mixed precision"
    ]
    if device.type == "cuda":
        arithmetic += [
            "TF32" if computation.tf32 else "no TF32",
            "deterministic kernels" if computation.deterministic else "cudnn.benchmark (nondeterministic)",
        ]
    if computation.compile:
        arithmetic.append("torch.compile")
    labels = (
        f"{args.dataset} {args.noise_type}"
        if not selection.custom
        else f"custom data {shown(selection.custom_file)} (its given labels)"
    )
    return (
        f"{labels}, seed {job.config.seed}: {len(data.train_pos)} training / {len(data.val_pos)} "
        f"validation / {len(data.labels)} detection images, PreResNet18 width {job.config.width}, device {device} "
        f"({', '.join(arithmetic)}), {computation.name}, run directory {shown(run.path)}"
    )


if __name__ == "__main__":
    run_cli(main)
