"""Side by side, in one invocation on one machine: the reference mode (the original's computation, which the
golden traces show equal to the authors' script), the default mode (eager, and compiled), and --amp where the
CPU has native bf16.

    python benchmarks/speed.py [--epochs 3] [--out benchmarks/results/speed.json]

Each mode trains the quick preset's data and network (CIFAR-10N worst, seed 0, 4,000 images, width 16)
for a few epochs with validation and test at the first and the last epoch, in its own process, one
after the other; the wall time is the training script's, start to finish. The compiled modes run twice:
first with an empty compilation cache (a machine's first run), then with the cache that run filled (every
later run). Prints each time and the ratios to the reference mode; the results file records the machine.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import SHARED, cifar10n_flags
from bkd.utils.devices import cpu_native_bf16
from bkd.utils.files import save_json
from bkd.utils.machine import machine_info

# name: (flags, compilation cache), in the order they run; "empty" starts a new cache, "filled" reuses it
MODES = {
    "reference": (["--reference"], None),
    "default, eager (--no_compile)": (["--no_compile"], None),
    "default, first run (empty compilation cache)": ([], "empty"),
    "default": ([], "filled"),
    "--amp, first run (bf16 graphs new to the cache)": (["--amp"], "filled"),
    "--amp": (["--amp"], "filled"),
}


def time_mode(flags, workdir, cache):
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache)
    start = time.time()
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "blind_knowledge_dist_training.py"), *flags],
        cwd=workdir,
        capture_output=True,
        text=True,
        env=env,
    )
    if proc.returncode != 0:
        raise SystemExit(
            f"error: {' '.join(flags[-3:])} exited {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}"
        )
    return time.time() - start


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--shared", default=SHARED, help="the shared data folder (cifar10-jpeg/, cifar-n/)")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "speed.json"))
    args = p.parse_args(argv)
    shared = os.path.abspath(args.shared)
    common = [
        "--preset",
        "quick",
        "--num_workers",
        "2",
        "--n_epoch",
        str(args.epochs),
        "--noisy_val_freq",
        "1000",
        "--clean_test_freq",
        "1000",
        "--dataset",
        "cifar10",
        "--noise_type",
        "worst",
        "--seed",
        "0",
        "--device",
        "cpu",
        *cifar10n_flags(shared),
    ]
    amp = cpu_native_bf16()
    modes = {name: mode for name, mode in MODES.items() if amp or "--amp" not in mode[0]}
    seconds = {}
    with tempfile.TemporaryDirectory() as workdir:
        for i, (name, (flags, cache)) in enumerate(modes.items()):
            cache_dir = os.path.join(workdir, "inductor-cache" if cache else f"unused-cache-{i}")
            if cache == "empty":
                shutil.rmtree(cache_dir, ignore_errors=True)
            seconds[name] = time_mode(
                common + flags + ["--results_dir", os.path.join(workdir, f"run{i}")], workdir, cache_dir
            )
            print(
                f"{name:>45}: {seconds[name]:7.1f} s  ({seconds['reference'] / seconds[name]:.2f}x the reference mode)",
                flush=True,
            )
    if not amp:
        print("--amp: not measured: this CPU has no native bf16 (AVX-512 BF16 or AMX)")
    ratios = {name: seconds["reference"] / s for name, s in seconds.items()}
    save_json(
        {
            "epochs": args.epochs,
            "seconds": seconds,
            "speedup_vs_reference": ratios,
            "machine": machine_info(),
            "command": "python benchmarks/speed.py " + " ".join(argv or sys.argv[1:]),
        },
        args.out,
    )
    print(f"written to {os.path.relpath(args.out, ROOT)}")


if __name__ == "__main__":
    main()
