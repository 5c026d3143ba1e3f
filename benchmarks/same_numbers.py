"""Does a change of the code change a number? Tiny runs by an earlier commit and by this tree, compared bit for bit.

    python benchmarks/same_numbers.py                 # against 3f3e1e9, the commit before the loop's redesign
    python benchmarks/same_numbers.py --before HEAD~3

Checks the earlier commit out into a temporary git worktree and runs its training script and this tree's with the
same flags, in the same kind of folder, on this machine's CPU: a tiny run in the default mode, one in --reference,
and a short --amp run (where this CPU has native bf16). Then it compares their `--trace` files field by field
(every hash and float with ==; only wall-clock times are not compared, and `config` entries that one side does not
record, such as a flag added since, are listed, not failed), their standard output line by line (our `[bkd] ` lines
and elapsed times aside) and their detection.npy and agreement.npy byte by byte. Exits 1 on any difference.
Any CPU will do: both sides run on the same one.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import SHARED, cifar10n_flags
from benchmarks.traces import comparable_log

BEFORE = "3f3e1e9"  # the last commit before the training loop's redesign (issue 32)
TINY = [
    "--subset",
    "1000",
    "--width",
    "8",
    "--n_epoch",
    "9",
    "--lr_step",
    "6",
    "--batch_size",
    "64",
    "--noisy_val_freq",
    "2",
    "--clean_test_freq",
    "3",
    "--print_freq",
    "4",
    "--device",
    "cpu",
    "--seed",
    "1",
]
RUNS = {
    "default": TINY,
    "reference": TINY + ["--reference", "--num_workers", "1"],
    "amp": TINY[:4] + ["--n_epoch", "4"] + TINY[6:] + ["--amp"],  # short: bf16 autocast on the CPU is slow
}
# wall-clock times; argv and the data paths, which name the same files relative to each tree
NOT_COMPARED = re.compile(r"^(run|config\.argv|config\.args_as_parsed\.(data_root|noise_path)|epochs\[\d+\]\.wall_s)$")


def run(tree, name, flags, workdir, shared):
    """One training run of `tree` in its own folder; returns (trace, stdout, {file: bytes})."""
    folder = os.path.join(workdir, name)
    os.makedirs(folder, exist_ok=True)
    cmd = [
        sys.executable,
        os.path.join(tree, "blind_knowledge_dist_training.py"),
        *flags,
        *cifar10n_flags(shared),
        "--noise_type",
        "worst",
        "--results_dir",
        "results",
        "--run_dir",
        "results/run",
        "--trace",
        "trace.json",
    ]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"), PYTHONPATH=tree)
    proc = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{tree}: {name} exited {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")
    with open(os.path.join(folder, "trace.json")) as fh:
        trace = json.load(fh)
    files = {}
    for npy in ("detection.npy", "agreement.npy"):
        with open(os.path.join(folder, "results", "run", npy), "rb") as fh:
            files[npy] = fh.read()
    return trace, proc.stdout, files


def differences(before, after, place=""):
    """Yield (place, before, after) of every difference of two parsed traces, in their order."""
    if NOT_COMPARED.match(place):
        return
    if isinstance(before, dict) and isinstance(after, dict):
        for key in list(before) + [k for k in after if k not in before]:
            where = f"{place}.{key}" if place else key
            if key in before and key in after:
                yield from differences(before[key], after[key], where)
            elif not NOT_COMPARED.match(where):
                yield where, before.get(key, "(absent)"), after.get(key, "(absent)")
    elif isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        for i, (b, a) in enumerate(zip(before, after, strict=False)):
            yield from differences(b, a, f"{place}[{i}]")
    elif before != after or type(before) is not type(after):
        yield place, before, after


def compare_runs(before, after):
    """Every difference of two runs (trace, stdout, files) as (what, before, after)."""
    (trace_b, out_b, files_b), (trace_a, out_a, files_a) = before, after
    diffs, notes = [], []
    for where, b, a in differences(trace_b, trace_a):  # config: a flag added since is recorded on one side only
        (notes if where.startswith("config.") and "(absent)" in (b, a) else diffs).append((where, b, a))
    log_b, log_a = comparable_log(out_b), comparable_log(out_a)
    for i, (b, a) in enumerate(zip(log_b, log_a, strict=False)):
        if b != a:
            diffs.append((f"stdout line {i + 1}", b, a))
            break
    if len(log_b) != len(log_a):
        diffs.append(("stdout lines", len(log_b), len(log_a)))
    diffs += [(name, "bytes", "other bytes") for name in files_b if files_b[name] != files_a[name]]
    return diffs, notes


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", default=BEFORE, help="the earlier commit (default %(default)s)")
    p.add_argument("--runs", nargs="+", choices=sorted(RUNS), default=list(RUNS), help="which tiny runs")
    p.add_argument("--shared", default=SHARED, help="the shared data folder (cifar10-jpeg/, cifar-n/)")
    args = p.parse_args(argv)
    from bkd.utils.devices import cpu_native_bf16
    from bkd.utils.machine import cpu_kind, cpu_model

    runs = [r for r in args.runs if r != "amp" or cpu_native_bf16()]
    print(
        f"{args.before} against this tree on {cpu_model()} ({cpu_kind()}): runs {', '.join(runs)}"
        + ("" if runs == args.runs else " (no --amp: this CPU has no native bf16)")
    )
    failed = False
    with tempfile.TemporaryDirectory(prefix="same_numbers_") as workdir:
        old_tree = os.path.join(workdir, "before")
        subprocess.run(
            ["git", "-C", ROOT, "worktree", "add", "--detach", old_tree, args.before], check=True, capture_output=True
        )
        try:
            for name in runs:
                before = run(old_tree, name, RUNS[name], os.path.join(workdir, "runs_before"), args.shared)
                after = run(ROOT, name, RUNS[name], os.path.join(workdir, "runs_after"), args.shared)
                diffs, notes = compare_runs(before, after)
                counts = f"{len(after[0]['iterations'])} iterations, {len(after[0]['epochs'])} epochs"
                print(
                    f"{name}: " + ("EQUAL" if not diffs else "DIFFERENT") + f" ({counts}, overfitting "
                    f"{(after[0]['overfitting'] or {}).get('epoch')})"
                )
                for what, b, a in diffs[:5]:
                    print(f"  {what}: before {str(b)[:80]}, after {str(a)[:80]}")
                for what, b, a in notes:
                    print(f"  (not compared: {what} before {str(b)[:60]}, after {str(a)[:60]})")
                failed |= bool(diffs)
        finally:
            subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", old_tree], capture_output=True)
    print("FAILED" if failed else "PASSED: every number equal")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
