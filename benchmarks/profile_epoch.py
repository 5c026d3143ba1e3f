"""Where an epoch goes: each phase of a warm-up and a robust epoch of the quick preset, timed alone.

    python benchmarks/profile_epoch.py [--out benchmarks/results/profile_epoch.json]

The quick preset's data and network (CIFAR-10N worst, seed 0, 4,000 images, width 16), built as a
run builds them (bkd.run.Run), in the reference mode and in the default mode, eager and compiled:
the first training and full-set passes (where the compiled mode compiles its training and evaluation
graphs, here from an empty compilation cache), then the training pass of a warm-up epoch and of a robust
epoch, the full-set pass, the validation and test passes, and the bookkeeping of an epoch's end (resume
state and metrics.json written, data fingerprint).
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch

from benchmarks import SHARED
from bkd.config import TrainConfig, resolve_computation
from bkd.data.datasets import DataSelection, input_dataset
from bkd.engine import evaluate
from bkd.method import group_alphas
from bkd.run import Job, Run
from bkd.utils.files import save_json, save_torch
from bkd.utils.logfmt import quiet
from bkd.utils.machine import machine_info
from bkd.utils.seeds import set_global_seeds
from flags import PRESETS


def timed(fn):
    start = time.time()
    fn()
    return time.time() - start


MODES = {"reference": {"reference": True}, "default, eager": {"compile": False}, "default, compiled": {"compile": True}}


def profile(data, mode):
    quick = {k: v for k, v in PRESETS["quick"].items() if k != "subset"}
    config = TrainConfig(**dict(quick, print_freq=10**6), num_workers=2, **mode)  # (no progress lines)
    set_global_seeds(0)
    device = torch.device("cpu")
    t = Run(Job(config, data, device, resolve_computation(config, device), quiet))
    t.state.stats[0] = {}
    seconds = {
        "first training + full-set pass (with compilation)": timed(lambda: (t.train(), t.calc_noise_probability(0)))
    }
    seconds["training pass, warm-up"] = timed(lambda: setattr(t, "last", t.train()))
    t.state.stats[0] = {}
    seconds["full-set pass"] = timed(lambda: t.calc_noise_probability(0))
    for view in ("val", "test"):
        seconds[f"{view} pass"] = timed(
            lambda view=view: evaluate(t.nets, t.loaders[view], autograd=t.computation.eval_autograd)
        )
    groups = np.random.RandomState(0).randint(1, 5, len(data.train_pos))
    t.sample_alpha = group_alphas(groups, config.alphas, "cpu")
    seconds["training pass, robust"] = timed(t.train)
    with tempfile.TemporaryDirectory() as tmp:
        seconds["epoch end: resume state + metrics.json"] = timed(
            lambda: (
                save_torch(t.resume_state(), os.path.join(tmp, "state.pth.tar")),
                save_json({"mean_top_student": [t.last.mean_top_student]}, os.path.join(tmp, "metrics.json")),
            )
        )
    seconds["data fingerprint (once per run)"] = timed(data.fingerprint)
    return seconds


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", default=SHARED)
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "profile_epoch.json"))
    args = p.parse_args(argv)
    shared = os.path.abspath(args.shared)
    selection = DataSelection(
        noise_type="worst",
        data_root=os.path.join(shared, "cifar10-jpeg"),
        noise_path=os.path.join(shared, "cifar-n", "CIFAR-10_human.pt"),
        download=False,
    )
    data = input_dataset(selection, TrainConfig(seed=0, val_ratio=0.1, subset=PRESETS["quick"]["subset"]))
    with tempfile.TemporaryDirectory(prefix="bkd-profile-inductor-") as cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache  # the compiled mode compiles from nothing (read when it compiles)
        results = {name: profile(data, mode) for name, mode in MODES.items()}
    print("| phase | " + " | ".join(f"{name} (s)" for name in MODES) + " |\n|---|" + "---|" * len(MODES))
    for phase in results["reference"]:
        print(f"| {phase} | " + " | ".join(f"{results[name][phase]:.2f}" for name in MODES) + " |")
    save_json({"seconds": results, "machine": machine_info()}, args.out)
    print(f"written to {os.path.relpath(args.out, ROOT)}")


if __name__ == "__main__":
    main()
