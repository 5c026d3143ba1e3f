"""Replay a golden trace of the authors' script with this project's --reference mode, and compare.

    python benchmarks/reference_check.py --trace ../shared/data/reference-traces/quick.json

Runs the three scripts as a user types them (training with `--reference --trace`, then
`learning.py` and `detection.py`) with the trace's configuration, on the CPU, with the
trace's thread count; then compares the trace field by field (every float with ==, every
hash), the three standard outputs line by line (elapsed times, label-file paths and our
`[bkd] ` lines aside) and detection.npy. Prints a table of field, ours, theirs; exits 1
on a difference in what this machine can reproduce.

On a CPU of another kind than the recording machine's (vendor, family, model and torch's CPU
capability: an AMD EPYC, with AVX2 or with AVX-512, against the traces' Intel Xeon), oneDNN
takes other kernels or blocks them differently, and float rounding differs from the first backward
pass on, and forty epochs amplify it. There the check demands what does not depend on
rounding: the data, the random streams and the schedule (indices, images, labels and
one-hot targets of every iteration, the initial weights), with the trace's overfitting
epoch given by `--overfitting_epoch` so that the schedule of work is the trace's; the
floats are still compared and reported, as "not demanded".
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import SHARED, cifar10n_flags
from benchmarks.traces import (
    DATA_CONFIG,
    DATA_ITERATION,
    compare,
    compare_logs,
    describe_cpu,
    same_cpu_kind,
    trace_machine,
)
from bkd.utils.files import portable, save_json
from bkd.utils.machine import cpu_kind, machine_info

LOGS = ("training", "learning", "detection")


def golden_flags(trace):
    """The project's flags for a golden trace: its command line plus the harness's subset, width and StepLR step."""
    env = trace["config"]["env"]
    return list(trace["config"]["argv"]) + [
        "--subset",
        env["GOLDEN_SUBSET"],
        "--width",
        env["GOLDEN_WIDTH"],
        "--lr_step",
        env["GOLDEN_LR_STEP"],
    ]


class StepFailed(Exception):
    """A replayed script failed; the message names the step and its log."""


def replay(trace_path, workdir, shared=SHARED, floats=None):
    """Run the three scripts for the trace's configuration in `workdir`; return what the comparison needs."""
    with open(trace_path) as fh:
        theirs = json.load(fh)
    recorded, threads = trace_machine(theirs)
    ours_kind = cpu_kind()
    if floats is None:
        floats = same_cpu_kind(ours_kind, recorded)
    data = cifar10n_flags(shared) + ["--results_dir", os.path.join(workdir, "results"), "--reference"]
    ours_trace = os.path.join(workdir, "trace.json")
    train = golden_flags(theirs) + data + ["--device", "cpu", "--trace", ours_trace]
    if not floats:  # the trace's schedule of work, whatever this CPU's rounding makes of the confidence curve
        train += ["--overfitting_epoch", str(theirs["overfitting"]["epoch"])]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads or os.cpu_count()))
    env.pop("MKL_NUM_THREADS", None)
    argv = theirs["config"]["argv"]
    golden = dict(zip(argv[::2], argv[1::2], strict=True))
    common = ["--dataset", golden["--dataset"], "--noise_type", golden["--noise_type"], "--seed", golden["--seed"]]
    out, walls = {}, {}
    for name, script, flags in (
        ("training", "blind_knowledge_dist_training.py", train),
        # the test transform draws nothing: the worker count cannot change a number
        ("learning", "learning.py", common + data + ["--num_workers", golden["--num_workers"]]),
        ("detection", "detection.py", common + data),
    ):
        start = time.time()
        proc = subprocess.run(
            [sys.executable, os.path.join(ROOT, script), *flags], cwd=workdir, env=env, capture_output=True, text=True
        )
        walls[name] = time.time() - start
        with open(os.path.join(workdir, f"{name}.log"), "w") as fh:
            fh.write(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
            raise StepFailed(
                f"{name} ({script}) exited {proc.returncode}: {last}; its output is in "
                f"{os.path.join(workdir, name + '.log')}"
            )
        out[name] = proc.stdout
    with open(ours_trace) as fh:
        ours = json.load(fh)
    run_dir = os.path.join(
        workdir, "results", f"{golden['--dataset']}_{golden['--noise_type']}_seed_{golden['--seed']}"
    )
    golden_logs = {}
    for name in LOGS:
        path = trace_path.replace(".json", f"-{name}.log")
        if os.path.exists(path):
            with open(path) as fh:
                golden_logs[name] = fh.read()
    with open(os.path.join(run_dir, "detection.npy"), "rb") as fh:
        detection_sha = hashlib.sha256(fh.read()).hexdigest()
    return {
        "ours": ours,
        "theirs": theirs,
        "floats": floats,
        "cpu": (describe_cpu(ours_kind), describe_cpu(recorded)),
        "threads": threads,
        "logs": out,
        "golden_logs": golden_logs,
        "walls": walls,
        "detection_sha256": detection_sha,
    }


def table(result):
    """Rows (field, ours, theirs, status, demanded) summarising the comparison, in execution order."""
    ours, theirs, floats = result["ours"], result["theirs"], result["floats"]
    diffs = list(compare(ours, theirs, floats=True))
    data_fields = set(DATA_ITERATION) | {"lr", "overfitting_epoch_found"}
    rows = []

    def add(field, o, t, different, demanded=True):
        status = "equal" if not different else "DIFFERENT" if demanded else "differs (not demanded on this CPU)"
        rows.append((field, _short(o), _short(t), status, demanded))

    for key in DATA_CONFIG:
        if key in theirs["config"]:
            add(
                f"config.{key}",
                ours["config"].get(key),
                theirs["config"][key],
                ours["config"].get(key) != theirs["config"][key],
            )
    groups = [
        ("iterations: index, images, labels", lambda d: d[0].startswith("iterations") and d[1] in data_fields, True),
        (
            "iterations: one-hot targets (warm-up)",
            lambda d: d[0].startswith("iterations") and d[1] == "target_sha256" and _warmup_row(d[0], theirs),
            True,
        ),
        (
            "iterations: losses, robust targets",
            lambda d: d[0].startswith("iterations") and d[1] not in data_fields,
            floats,
        ),
        ("epochs: lr, overfitting epoch", lambda d: d[0].startswith("epochs") and d[1] in data_fields, True),
        (
            "epochs: statistics, accuracies, weights",
            lambda d: d[0].startswith("epochs") and d[1] not in data_fields,
            floats,
        ),
        ("overfitting: Otsu splits and groups", lambda d: d[0].startswith("overfitting"), floats),
        ("detection.npy (trace)", lambda d: d[0].startswith("detection"), floats),
        ("checkpoints", lambda d: d[0].startswith("checkpoints"), floats),
    ]
    for field, match, demanded in groups:
        hit = next((d for d in diffs if match(d)), None)
        n = {"iterations": len(theirs["iterations"]), "epochs": len(theirs["epochs"])}.get(field.split(":")[0], "")
        if hit is None:
            add(f"{field}" + (f" ({n} rows)" if n else ""), "equal", "equal", False, demanded)
        else:
            add(f"{field}: first at {hit[0]}.{hit[1]}", hit[2], hit[3], True, demanded)
    add(
        "detection.npy (file sha256)",
        result["detection_sha256"],
        theirs["detection_sha256"],
        result["detection_sha256"] != theirs["detection_sha256"],
        floats,
    )
    for name in LOGS:
        if name in result["golden_logs"]:
            first = compare_logs(result["logs"][name], result["golden_logs"][name], floats=True)
            structural = compare_logs(result["logs"][name], result["golden_logs"][name], floats=False)
            if first is None:
                add(f"{name} stdout, line by line", "equal", "equal", False)
            elif structural is not None or floats:
                bad = structural or first
                add(f"{name} stdout: first at line {bad[0]}", bad[1], bad[2], True)
            else:
                add(
                    f"{name} stdout: formats and data (numbers from line {first[0]} differ)",
                    first[1],
                    first[2],
                    True,
                    False,
                )
    return rows


def _warmup_row(place, theirs):
    epoch = int(place.split("epoch ")[1].split(",")[0])
    return theirs["epochs"][epoch].get("mean_max_student_prob") is not None


def _short(value):
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:18] + "…" + text[-18:]


def print_table(rows):
    widths = [max(len(str(r[i])) for r in rows + [("field", "ours", "theirs", "result")]) for i in range(4)]
    line = lambda r: "  ".join(str(r[i]).ljust(widths[i]) for i in range(4))  # noqa: E731
    print(line(("field", "ours", "theirs", "result")))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line(r))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trace", required=True, help="a golden trace, e.g. ../shared/data/reference-traces/tiny.json")
    p.add_argument("--shared", default=SHARED, help="the shared data folder (cifar10-jpeg/, cifar-n/)")
    p.add_argument("--workdir", default=None, help="where the replay runs (default results/reference_<name>)")
    p.add_argument(
        "--out",
        default=None,
        help="write the table and timings as JSON here (default benchmarks/results/reference_<name>.json)",
    )
    args = p.parse_args(argv)
    # paths as the caller gave them, relative to the caller's directory (the scripts run in the work directory)
    trace, shared = os.path.abspath(args.trace), os.path.abspath(args.shared)
    name = os.path.splitext(os.path.basename(trace))[0]
    workdir = os.path.abspath(args.workdir or os.path.join(ROOT, "results", f"reference_{name}"))
    if not os.path.isfile(trace):
        print(f"error: --trace {args.trace}: no such file", file=sys.stderr)
        return 2
    os.makedirs(workdir, exist_ok=True)
    try:
        result = replay(trace, workdir, shared)
    except StepFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    rows = table(result)
    ours_cpu, their_cpu = result["cpu"]
    print(
        f"replay of {args.trace}: this CPU {ours_cpu}, the trace's {their_cpu}, {result['threads']} threads; "
        + (
            "every field demanded"
            if result["floats"]
            else "floats not demanded (other CPU kernels round differently); schedule fixed with --overfitting_epoch"
        )
    )
    print_table(rows)
    theirs_wall = result["theirs"]["run"]["wall_total_s"]
    print(
        f"wall time of training: ours {result['walls']['training']:.0f} s (this machine), the authors' script "
        f"{theirs_wall:.0f} s (the recording machine); learning.py + detection.py: ours "
        f"{result['walls']['learning'] + result['walls']['detection']:.0f} s"
    )
    failed = [r for r in rows if r[3] == "DIFFERENT"]
    save_json(
        {
            "trace": portable(trace),
            "machine": machine_info(),
            "floats_demanded": result["floats"],
            "rows": [dict(zip(("field", "ours", "theirs", "result"), r[:4], strict=False)) for r in rows],
            "wall_s": result["walls"],
            "their_training_wall_s": theirs_wall,
            "passed": not failed,
        },
        args.out or os.path.join(ROOT, "benchmarks", "results", f"reference_{name}.json"),
    )
    if failed:
        print(f"FAILED: first difference: {failed[0][0]}: ours {failed[0][1]}, theirs {failed[0][2]}")
        return 1
    print(
        "PASSED" + ("" if result["floats"] else " (data, random streams and schedule; floats not demanded on this CPU)")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
