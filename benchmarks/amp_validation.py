"""Does bf16 autocast (--amp) change the method's outcome? The quick preset in fp32 and with --amp, side by side.

    python benchmarks/amp_validation.py [--seeds 0 1 2] [--noise_types worst aggre] \
        [--out benchmarks/results/amp_validation]

For CIFAR-10N `worst` and `aggre`, seeds 0-2, the quick preset runs twice through the launcher (training,
learning.py, detection.py): in fp32 (the default) and with --amp. Reports per run and per label set (mean ±
std over seeds) the overfitting epoch, the test accuracy (best by validation, last) and the detection
precision / recall / F1, and for each measure whether the fp32-vs-bf16 difference of the means exceeds the
spread between seeds. Runs where the device has no native bf16 only on such a CPU (AVX-512 BF16 or AMX) or on
CUDA: elsewhere it says so and stops. The launcher resumes: rerunning the command continues where it stopped.
"""

import argparse
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import SHARED, cifar10n_flags
from bkd.report import COLUMNS, load_run, markdown, mean_std
from bkd.utils.devices import cpu_native_bf16
from bkd.utils.files import save_json
from bkd.utils.machine import machine_info
from launch.grid import make_grid

PRECISIONS = {"fp32": [], "bf16 (--amp)": ["--amp"]}


def launch(precision_flags, results_dir, args, shared):
    command = [
        sys.executable,
        "-m",
        "launch",
        "run",
        "--quick",
        "--cpu",
        "--seeds",
        *map(str, args.seeds),
        "--noise_types",
        *args.noise_types,
        "--parallel",
        str(args.parallel),
        "--results_dir",
        results_dir,
        *cifar10n_flags(shared),
        *precision_flags,
    ]
    if subprocess.run(command, cwd=ROOT).returncode != 0:
        raise SystemExit(
            f"error: the launch into {os.path.relpath(results_dir, ROOT)} failed (see its logs); "
            "rerun this command to resume"
        )


def compare(per_precision):
    """Per label set and measure: each precision's mean ± std over seeds, the difference of the means and
    whether it exceeds the spread between seeds (the larger of the two standard deviations)."""
    rows = []
    for noise_type in dict.fromkeys(n for runs in per_precision.values() for n in runs):
        for column, get, digits in COLUMNS:
            row = {"label set": noise_type, "measure": column}
            values = {
                name: [get(m) for m in runs[noise_type] if get(m) is not None] for name, runs in per_precision.items()
            }
            for name, vals in values.items():
                total = len(per_precision[name][noise_type])
                row[name] = mean_std(vals, digits) + (f" ({len(vals)} of {total} runs)" if len(vals) < total else "")
            fp32, bf16 = (np.asarray(v, dtype=float) for v in values.values())
            if len(fp32) > 1 and len(bf16) > 1:
                diff, spread = bf16.mean() - fp32.mean(), max(fp32.std(ddof=1), bf16.std(ddof=1))
                row["difference"] = f"{diff:+.{digits}f}"
                row["beyond seed spread"] = "yes" if abs(diff) > spread else "no"
            rows.append(row)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--noise_types", nargs="+", default=["worst", "aggre"])
    p.add_argument("--parallel", type=int, default=2, help="runs at once (the cores are divided between them)")
    p.add_argument("--shared", default=SHARED, help="the shared data folder (cifar10-jpeg/, cifar-n/)")
    p.add_argument("--runs_dir", default=os.path.join(ROOT, "results", "amp_validation"), help="where the runs go")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "amp_validation"))
    args = p.parse_args(argv)
    if not cpu_native_bf16():
        print(
            "amp validation not run: this CPU has no native bf16 (AVX-512 BF16 or AMX), where --amp is refused; "
            "run it on a CPU that has it (the README says the validation is pending until then)"
        )
        return
    shared = os.path.abspath(args.shared)
    per_precision, per_run = {}, []
    for name, flags in PRECISIONS.items():
        results_dir = os.path.join(args.runs_dir, "amp" if flags else "fp32")
        launch(flags, results_dir, args, shared)
        runs = {}
        for run in make_grid(seeds=args.seeds, noise_types=args.noise_types, results_dir=results_dir, preset="quick"):
            m = load_run(run.path)
            runs.setdefault(run.noise_type, []).append(m)
            per_run.append(
                {
                    "label set": run.noise_type,
                    "seed": run.seed,
                    "precision": name,
                    "torch.compile": bool(m["config"].get("compile")),  # as the run recorded it
                    **{column: None if get(m) is None else round(get(m), digits) for column, get, digits in COLUMNS},
                }
            )
        per_precision[name] = runs
    rows = compare(per_precision)
    table = markdown(rows, ["label set", "measure", *PRECISIONS, "difference", "beyond seed spread"])
    runs_table = markdown(per_run, ["label set", "seed", "precision", "torch.compile"] + [c for c, _, _ in COLUMNS])
    print("\n".join(table))
    with open(args.out + ".md", "w") as fh:
        fh.write(
            "\n".join(
                [
                    "## fp32 against bf16 autocast: mean ± std over seeds",
                    "",
                    *table,
                    "",
                    "## per run",
                    "",
                    *runs_table,
                    "",
                ]
            )
        )
    save_json(
        {
            "seeds": args.seeds,
            "noise_types": args.noise_types,
            "comparison": rows,
            "runs": per_run,
            "machine": machine_info(),
            "command": "python benchmarks/amp_validation.py " + " ".join(argv or sys.argv[1:]),
        },
        args.out + ".json",
    )
    print(f"written to {os.path.relpath(args.out, ROOT)}.md and .json")


if __name__ == "__main__":
    main()
