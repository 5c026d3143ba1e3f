"""Launch, watch and summarise a grid of BKD runs (seeds x label sets).

    python -m launch run     [grid] [where] [-- or any other flag: passed to training]
    python -m launch status  [grid]
    python -m launch summary [grid] [--out PREFIX]

Grid: --grid original (default: seed 0, CIFAR-10N aggre, worst, rand1, the authors' run.sh)
or --grid challenge (seeds 0-4 x CIFAR-10N aggre, rand1, worst and CIFAR-100N noisy100);
--seeds, --noise_types, --dataset narrow or replace it; --quick uses the quick preset;
--reference runs all three scripts in reference mode.
Where: on this machine (one run per visible GPU, --per_gpu K; on a CPU --parallel N runs with
the cores divided between them, or --threads T each), or on SLURM with --slurm.
Launching the same grid again skips finished runs, continues unfinished ones and never starts
a second writer on a running one. `run.sh` calls `python -m launch run`.
"""

import argparse
import os
import sys
from collections.abc import Sequence

from bkd.utils.errors import EXIT_USAGE, UsageError
from flags import Parser  # one-line errors (exit 2), for the launcher and each of its commands
from launch.grid import GRIDS, Run, make_grid
from launch.local import print_status, report, run_local, slots

RUN_SELECTORS = ("--dataset", "--noise_type", "--seed", "--results_dir", "--run_dir", "--preset")


def grid_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags that pick a grid's runs, on `p`."""
    p.add_argument(
        "--grid", choices=sorted(GRIDS), default="original", help="which runs (default: the authors' run.sh)"
    )
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default: the grid's)")
    p.add_argument("--noise_types", nargs="+", default=None, help="label sets (default: the grid's)")
    p.add_argument("--dataset", default=None, help="dataset of --noise_types (default: each label set's own)")
    p.add_argument("--results_dir", default="results", help="parent folder of the run directories")
    p.add_argument("--quick", action="store_true", help="the CPU-sized quick preset (docs/results.md)")
    return p


def build_parser() -> Parser:
    p = Parser(
        prog="python -m launch",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    sub = p.add_subparsers(dest="command", required=True)
    # no abbreviations: a training flag such as --seed must not be read as --seeds
    run = grid_parser(
        sub.add_parser("run", help="run the grid's unfinished runs (unknown flags go to training)", allow_abbrev=False)
    )
    run.add_argument("--reference", action="store_true", help="all three scripts in reference mode")
    run.add_argument("--parallel", type=int, default=None, help="runs at once (default: one per visible GPU, else 1)")
    run.add_argument("--per_gpu", type=int, default=1, help="runs per GPU at once")
    run.add_argument("--cpu", action="store_true", help="ignore GPUs: run on the CPU")
    run.add_argument(
        "--threads", type=int, default=None, help="CPU threads per run (default: the cores divided between runs)"
    )
    slurm = run.add_argument_group("SLURM (through submitit)")
    slurm.add_argument("--slurm", action="store_true", help="submit one job array to SLURM instead of running here")
    slurm.add_argument("--partition", default=None)
    slurm.add_argument("--gpus", type=int, default=1, help="GPUs per run")
    slurm.add_argument("--cpus", type=int, default=4, help="CPUs per run (its thread count)")
    slurm.add_argument("--mem_gb", type=float, default=20, help="memory per run, GB")
    slurm.add_argument(
        "--time_min",
        type=int,
        default=24 * 60,
        help="time limit per job, minutes (a run past it is requeued and resumes)",
    )
    slurm.add_argument("--array_parallelism", type=int, default=256, help="array tasks running at once")
    slurm.add_argument(
        "--sbatch", nargs="+", default=[], metavar="KEY=VALUE", help="extra sbatch options, e.g. account=abc qos=high"
    )
    slurm.add_argument("--slurm_folder", default=None, help="submitit's logs and pickles (default <results_dir>/slurm)")
    slurm.add_argument("--wait", action="store_true", help="wait for the jobs, then print the summary")
    grid_parser(
        sub.add_parser(
            "status",
            help="each run: done / running / failed / trained (evaluations pending) / interrupted / not started",
            allow_abbrev=False,
        )
    )
    summary = grid_parser(
        sub.add_parser("summary", help="challenge tables: mean ± std over seeds per label set", allow_abbrev=False)
    )
    summary.add_argument("--out", default=None, help="write <OUT>.md and <OUT>.csv (default <results_dir>/summary)")
    return p


def split_flags(extra: Sequence[str]) -> tuple[list[str], list[str]]:
    """Extra flags -> (training flags, the subset learning.py and detection.py accept)."""
    from flags import base_parser

    accepted = base_parser("").option_names
    evaluation: list[str] = []
    keep = False
    for token in extra:
        if token.startswith("--"):
            keep = token.split("=", 1)[0] in accepted
        if keep:
            evaluation.append(token)
    return list(extra), evaluation


def check_training_flags(runs: Sequence[Run], train_flags: Sequence[str], here: bool) -> None:
    """The flags passed on to training, checked as training checks them, before anything is created: one line,
    exit 2. With `here` (runs on this machine, not submitted to SLURM, whose nodes may have what this one lacks), the
    device too: `--device cuda` where there is no CUDA creates no run directory."""
    from bkd.config import check_config
    from flags import parse, training_config, training_parser

    for run in runs[:1]:  # the runs differ only in the flags that select them
        args = parse(training_parser(), run.flags() + list(train_flags))  # (an unknown flag: one line, exit 2)
        check_config(training_config(args))
        if args.resume:
            raise UsageError("--resume: the launcher resumes every unfinished run itself; drop it")
        if here and args.device not in ("auto", "cpu"):
            from bkd.utils.devices import resolve_device  # (torch: only where a device is named)

            resolve_device(args.device)


def runs_of(args: argparse.Namespace) -> list[Run]:
    """The runs the flags pick."""
    return make_grid(
        args.grid, args.seeds, args.noise_types, args.dataset, args.results_dir, "quick" if args.quick else "default"
    )


def check_grid_args(args: argparse.Namespace) -> str | None:
    """One line naming the bad value, or None."""
    from bkd.data.cifar import DATASETS
    from bkd.data.labels import NOISE_TYPES, check_noise_type

    if args.dataset == "custom":
        return (
            "the launcher runs CIFAR-N grids; train your own data with blind_knowledge_dist_training.py "
            "--dataset custom, then learning.py and detection.py (docs/custom-data.md)"
        )
    if args.dataset is not None and args.dataset not in DATASETS:
        return f"--dataset {args.dataset!r} is unknown; use one of {', '.join(DATASETS)}"
    for noise_type in args.noise_types or ():
        try:
            check_noise_type(args.dataset or NOISE_TYPES.get(noise_type, ("cifar10",))[0], noise_type)
        except UsageError as err:
            return str(err)
    if args.command == "run":
        for name in ("parallel", "threads", "per_gpu"):
            value = getattr(args, name)
            if value is not None and value < 1:
                return f"--{name} {value} must be at least 1"
    elif not os.path.isdir(args.results_dir):
        return f"--results_dir {args.results_dir}: no such directory; nothing has been launched there"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """python -m launch run | status | summary; returns the exit code."""
    args, extra = build_parser().parse_known_args(argv)
    if extra and args.command != "run":
        print(f"error: unknown flags {' '.join(extra)} (see python -m launch {args.command} --help)", file=sys.stderr)
        return EXIT_USAGE
    problem = check_grid_args(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    runs = runs_of(args)
    if args.command == "status":
        from launch.slurm import job_states, recorded_jobs

        print_status(runs, job_states=job_states(recorded_jobs(runs)))
        return 0
    if args.command == "summary":
        from launch.summary import write_grid_summary

        print("\n".join(write_grid_summary(runs, args.out or os.path.join(args.results_dir, "summary"))))
        return 0
    extra = [t for t in extra if t != "--"]
    clash = [t for t in extra if t.split("=", 1)[0] in RUN_SELECTORS]
    if clash:
        print(
            f"error: {clash[0]} selects runs; use the launcher's --seeds, --noise_types, --dataset, --results_dir, "
            "--quick (see python -m launch run --help)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.reference:
        extra.append("--reference")
    train_flags, eval_flags = split_flags(extra)
    try:
        check_training_flags(runs, train_flags, here=not args.slurm)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    if args.slurm:
        from launch import slurm

        folder = args.slurm_folder or os.path.join(args.results_dir, "slurm")
        resources = slurm.Resources(
            folder,
            args.partition,
            args.gpus,
            args.cpus,
            args.mem_gb,
            args.time_min,
            args.array_parallelism,
            tuple(args.sbatch),
        )
        slurm.submit(runs, train_flags, eval_flags, resources)
        if not args.wait:
            print(f"== follow with: python -m launch status {' '.join(grid_args(args))}")
            return 0
        statuses = slurm.wait(runs)
        from launch.summary import write_grid_summary

        print("\n".join(write_grid_summary(runs, os.path.join(args.results_dir, "summary"))))
        failed = [s for s in statuses if s["state"] != "done"]
        for s in failed:
            print(f"   {s['run']}: {s['state']} {s['detail']}; log {s['log']}")
        return 1 if failed else 0
    outcomes = run_local(runs, train_flags, eval_flags, slots(args.parallel, args.per_gpu, args.cpu, args.threads))
    return report(runs, outcomes)


def grid_args(args: argparse.Namespace) -> list[str]:
    """The flags that pick the same grid again (for the line saying how to follow it)."""
    out = ["--grid", args.grid, "--results_dir", args.results_dir]
    if args.seeds is not None:
        out += ["--seeds", *map(str, args.seeds)]
    if args.noise_types:
        out += ["--noise_types", *args.noise_types]
    if args.dataset:
        out += ["--dataset", args.dataset]
    return out + (["--quick"] if args.quick else [])


if __name__ == "__main__":
    sys.exit(main())
