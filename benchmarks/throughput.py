"""Input pipeline and warm-up epoch speed: the original-style PIL pipeline vs the device-resident one.

    python benchmarks/throughput.py [--images 4000] [--width 16] [--out benchmarks/results/throughput.json]

(a) input pipeline alone: images/s delivering augmented, normalised training batches
    (PIL + torchvision transforms + DataLoader with the machine's workers, vs DeviceLoader);
(b) one warm-up epoch end to end (training of teacher and student plus the full-set
    statistic pass) on the same images, network and batch size, with each pipeline:
    seconds per epoch and peak memory.
Each case runs in its own process so that peak memory is its own. Uses
$BKD_DATA_ROOT/cifar10.npz when present, else random images (speed does not depend on content).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np
import torch

from bkd.data.cifar import DATASETS
from bkd.data.loaders import LoaderSpec, make_loader
from bkd.utils.machine import machine_info

INFO = DATASETS["cifar10"]
AUG = {"pad_mode": INFO["pad_mode"], "flip_first": INFO["flip_first"]}


def images(n):
    path = os.path.join(os.environ.get("BKD_DATA_ROOT", ""), "cifar10.npz")
    if os.path.exists(path):
        with np.load(path) as f:
            return f["x_train"][:n], f["y_train"][:n], "cifar10.npz"
    rng = np.random.RandomState(0)
    return rng.randint(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.randint(0, 10, n), "random"


def loader(kind, x, y, batch_size, shuffle, augment, workers):
    return make_loader(
        x,
        y,
        LoaderSpec(
            batch_size,
            "cpu",
            INFO["mean"],
            INFO["std"],
            augment=augment,
            shuffle=shuffle,
            num_workers=workers,
            kind=kind,
        ),
    )


def case_pipeline(kind, n, batch_size, workers, repeats=3):
    x, y, _ = images(n)
    ld = loader(kind, x, y, batch_size, True, AUG, workers)
    for _ in ld:  # warm up (worker start, allocator)
        pass
    start = time.perf_counter()
    for _ in range(repeats):
        for _batch in ld:
            pass
    seconds = time.perf_counter() - start
    return {"images_per_second": repeats * n / seconds}


def case_epoch(kind, n, batch_size, workers, width, fast_arithmetic):
    """One warm-up epoch. `fast_arithmetic`: channels-last, foreach SGD and eval batch 256 (the new
    engine's defaults) instead of NCHW, per-parameter SGD and eval batch = training batch."""
    from bkd.config import Computation, TrainConfig
    from bkd.data.custom import from_arrays
    from bkd.data.datasets import CUSTOM, DataSelection, input_dataset
    from bkd.engine import evaluate
    from bkd.run import Job, Run
    from bkd.utils.logfmt import quiet

    x, y, _ = images(n)
    data = input_dataset(DataSelection(dataset=CUSTOM, arrays=from_arrays(x, y)), TrainConfig(val_ratio=0.0))
    config = TrainConfig(width=width, batch_size=batch_size, num_workers=workers, n_epoch=2, print_freq=10**9)
    computation = Computation(
        loader=kind,
        eval_batch_size=256 if fast_arithmetic else batch_size,
        channels_last=fast_arithmetic,
        sgd_foreach=True if fast_arithmetic else None,
    )
    torch.manual_seed(0)
    run = Run(Job(config, data, torch.device("cpu"), computation, quiet))
    times = []
    for epoch in range(2):  # the first epoch warms up the allocator; report the second
        start = time.perf_counter()
        run.epoch = epoch
        run.train()
        evaluate(run.nets, run.loaders["full"])
        times.append(time.perf_counter() - start)
    return {"seconds_per_epoch": times[-1], "first_epoch_seconds": times[0]}


def run_case(name, args, **kw):
    """Run one case in a fresh process; return its figures plus peak RSS (MiB) of it and its workers."""
    cmd = [sys.executable, os.path.abspath(__file__), "--case", name, "--case_args", json.dumps(kw)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def child(name, kw):
    result = {"pipeline": case_pipeline, "epoch": case_epoch}[name](**kw)
    self_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result["peak_rss_mib"] = round(self_kib / 1024, 1)
    result["peak_worker_rss_mib"] = round(child_kib / 1024, 1)
    print(json.dumps(result))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=4000, help="images in the epoch benchmark")
    p.add_argument("--pipeline_images", type=int, default=10000, help="images per pass in the pipeline benchmark")
    p.add_argument("--width", type=int, default=16, help="PreResNet18 width of the epoch benchmark")
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument(
        "--workers", type=int, default=os.cpu_count(), help="DataLoader workers of the original-style pipeline"
    )
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "throughput.json"))
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--case_args", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:
        return child(args.case, json.loads(args.case_args))

    results = {
        "command": " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]),
        "images": images(1)[2],
        "machine": machine_info(),
        "batch_size": args.batch_size,
        "workers": args.workers,
    }
    epoch = dict(n=args.images, batch_size=args.batch_size, workers=args.workers, width=args.width)
    for kind in ("torchvision", "device"):
        results[f"pipeline_{kind}"] = run_case(
            "pipeline", args, kind=kind, n=args.pipeline_images, batch_size=args.batch_size, workers=args.workers
        )
    # original-style: PIL pipeline and the original's arithmetic; new: everything of the new engine
    results["epoch_torchvision"] = run_case("epoch", args, kind="torchvision", fast_arithmetic=False, **epoch)
    results["epoch_device"] = run_case("epoch", args, kind="device", fast_arithmetic=True, **epoch)
    # the input pipeline's share alone: PIL pipeline with the new arithmetic
    results["epoch_torchvision_fast_arithmetic"] = run_case(
        "epoch", args, kind="torchvision", fast_arithmetic=True, **epoch
    )
    a_old, a_new = results["pipeline_torchvision"]["images_per_second"], results["pipeline_device"]["images_per_second"]
    b_old, b_new = results["epoch_torchvision"]["seconds_per_epoch"], results["epoch_device"]["seconds_per_epoch"]
    b_mid = results["epoch_torchvision_fast_arithmetic"]["seconds_per_epoch"]
    results["pipeline_speedup"] = a_new / a_old
    results["epoch_speedup"] = b_old / b_new

    rows = [
        ("(a) input pipeline, images/s", f"{a_old:,.0f}", f"{a_new:,.0f}", f"{a_new / a_old:.1f}x"),
        (
            f"(b) warm-up epoch, {args.images} images, width {args.width}: s",
            f"{b_old:.2f}",
            f"{b_new:.2f}",
            f"{b_old / b_new:.2f}x",
        ),
        ("    same, PIL pipeline with the new arithmetic: s", f"{b_mid:.2f}", f"{b_new:.2f}", f"{b_mid / b_new:.2f}x"),
        (
            "(b) peak RSS, MiB (main + largest worker)",
            f"{results['epoch_torchvision']['peak_rss_mib']:.0f} + "
            f"{results['epoch_torchvision']['peak_worker_rss_mib']:.0f}",
            f"{results['epoch_device']['peak_rss_mib']:.0f}",
            "",
        ),
    ]
    m = results["machine"]
    print(
        f"{m['cpu_model']} ({m['cpu_capability']}), {m['cpu_count']} CPUs, {m['num_threads']} threads, torch "
        f"{m['versions']['torch']}; batch {args.batch_size}; original-style pipeline with {args.workers} workers"
    )
    print(f"| {'measure':<48} | {'original-style':>14} | {'device':>10} | {'ratio':>6} |")
    print(f"|{'-' * 50}|{'-' * 16}|{'-' * 12}|{'-' * 8}|")
    for row in rows:
        print(f"| {row[0]:<48} | {row[1]:>14} | {row[2]:>10} | {row[3]:>6} |")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(results, fh, indent=2)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
