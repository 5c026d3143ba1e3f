"""The GPU check: the `cuda` tests, then the throughput of every mode at full scale, in one command.

    python benchmarks/gpu_check.py                      # on a GPU: under 8 minutes on a data-centre GPU
    python benchmarks/gpu_check.py --device cpu --tiny  # the same, tiny, on the CPU: shows the script works

1. The `cuda`-marked tests (tests/test_cuda.py; they skip without a GPU), and their result.
2. Throughput on synthetic CIFAR-shaped data (50,000 training images: 45,000 training / 5,000 validation,
   10,000 test images, 10 classes), PreResNet18 at width 64, batch 128: for each mode, in a process of its
   own, built as a run builds it (bkd.run.build), a fixed number of training iterations after warm-up in the
   warm-up phase and in the robust phase, one validation, test and full-set pass, and the state save (the
   host copy the training thread makes, and the write). Modes (MODES): the reference mode (the original's
   PIL loader, 4 workers), the default mode eager and compiled, --amp eager and compiled, cuDNN's
   nondeterministic autotuned kernels (--cudnn_benchmark) against the deterministic default, --tf32, and, on
   CUDA, torch.compile's CUDA graphs (mode="reduce-overhead") as a candidate.
3. Per mode: seconds per warm-up and per robust epoch, the projected time of the 300-epoch default schedule,
   peak GPU memory, and the ratios to the reference mode measured in this same invocation.
4. The machine's facts (GPU, driver, CUDA, cuDNN, TF32 and determinism settings).
Writes <out>.json and <out>.md, and prints a short table last. Needs only torch, torchvision, numpy, pytest.

--tiny on the CPU: a few hundred images of width 8, a few iterations, and torch.compile with dynamo's
eager backend (the code path, not inductor's speed, which would take longer than the whole check).
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

# name: (training flags as TrainConfig fields, torch.compile mode, devices it applies to); in the order they run.
# "default" is the default mode (compiled at width 64); "amp" is --amp, also compiled.
MODES = {
    "reference": (dict(reference=True, num_workers=4), None, ("cpu", "cuda")),
    "default-eager": (dict(compile=False), None, ("cpu", "cuda")),
    "default": (dict(compile=True), None, ("cpu", "cuda")),
    "amp-eager": (dict(amp=True, compile=False), None, ("cpu", "cuda")),
    "amp": (dict(amp=True, compile=True), None, ("cpu", "cuda")),
    "nondeterministic-eager": (dict(cudnn_benchmark=True, compile=False), None, ("cuda",)),
    "tf32-eager": (dict(tf32=True, compile=False), None, ("cuda",)),
    "amp-nondeterministic": (dict(amp=True, cudnn_benchmark=True, compile=True), None, ("cuda",)),
    "nchw": (dict(compile=True, no_channels_last=True), None, ("cuda",)),
    "cuda-graphs": (dict(compile=True), "reduce-overhead", ("cuda",)),
}
EVAL_BATCHES = (256, 1024, 4096)  # the default mode's test pass at other evaluation batch sizes (the default: 1024 on CUDA)
FULL = dict(train=50_000, test=10_000, classes=10, width=64, batch=128, warmup_iters=10, timed_iters=40)
TINY = dict(train=640, test=128, classes=10, width=8, batch=32, warmup_iters=2, timed_iters=4)
SCHEDULE = dict(n_epoch=300, eval_every=10)  # the original's: validation and test every 10 epochs and the last
TARGETS = {"default": 3.0, "amp": 6.0}  # per-epoch speed-up over the reference mode (the targets)
AMP_BUDGET_MIN = 15  # the 300-epoch schedule with --amp, projected, on an H100-class GPU


# --- one mode, in a process of its own ------------------------------------------------------------------------------
class Take:
    """The first `n` batches of a loader (a training pass of a fixed number of iterations)."""

    def __init__(self, loader, n):
        self.loader, self.n = loader, n
        self.num_samples, self.batch_size = loader.num_samples, loader.batch_size

    def __len__(self):
        return min(self.n, len(self.loader))

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i == self.n:
                return
            yield batch


def synthetic_data(size, seed=0):
    """Random CIFAR-shaped images (the speed does not depend on content) as a run's data, 10 % validation."""
    import numpy as np

    from data.custom import from_arrays
    from data.setup import choose_images, custom_source

    rng = np.random.RandomState(seed)
    images = rng.randint(0, 256, (size["train"], 32, 32, 3), dtype=np.uint8)
    labels = np.arange(size["train"]) % size["classes"]
    x_test = rng.randint(0, 256, (size["test"], 32, 32, 3), dtype=np.uint8)
    y_test = np.arange(size["test"]) % size["classes"]
    return choose_images(custom_source(from_arrays(images, labels, x_test=x_test, y_test=y_test)), 0, seed, 0.1)


def measure_mode(name, device_name, size):
    """Time one mode (MODES[name]) the way a run computes; returns its figures."""
    import numpy as np
    import torch

    from bkd.config import TrainConfig, resolve_computation
    from bkd.engine import StopFlag, evaluate, group_alphas, train_epoch
    from bkd.outputs import Listener
    from bkd.run import build, full_set_pass, resume_state, weights_snapshot
    from bkd.state import MethodState
    from data.loaders import make_loader
    from utils.files import save_torch
    from utils.runtime import cuda_settings, resolve_device, set_global_seeds

    flags, compile_mode, _ = MODES[name]
    device = resolve_device(device_name)
    if flags.get("compile"):
        extra = {"mode": compile_mode} if compile_mode else {}
        if size is TINY and device.type == "cpu":
            extra = {"backend": "eager"}  # dynamo's path without inductor's compilation (module docstring)
        torch.compile = _compile_with(torch.compile, extra)
    config = TrainConfig(width=size["width"], batch_size=size["batch"], **flags)
    computation = resolve_computation(config, device)
    data = synthetic_data(size)
    cuda = device.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    def timed(fn):
        sync()
        start = time.perf_counter()
        out = fn()
        sync()
        return time.perf_counter() - start, out

    quiet = lambda *a, **k: None  # noqa: E731
    result = {"mode": name, "precision": computation.precision, "compile": computation.compile,
              "deterministic": computation.deterministic, "tf32": computation.tf32, "loader": computation.loader,
              "eval_batch_size": computation.eval_batch_size}
    with cuda_settings(device, computation.deterministic, computation.tf32):
        set_global_seeds(0)
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        result["build_s"], t = timed(lambda: build(config, data, device, computation, Listener(), quiet))
        common = dict(epoch=0, n_epoch=SCHEDULE["n_epoch"], num_classes=size["classes"], print_freq=10 ** 9,
                      channels_last=t.channels_last, log=quiet)
        train = t.loaders["train"]
        warm, n = size["warmup_iters"], size["timed_iters"]
        result["first_iterations_s"], _ = timed(lambda: train_epoch(*t.nets, Take(train, warm), t.optimizer, t.precision,
                                                                    **common))
        result["warmup_iteration_s"] = timed(lambda: train_epoch(*t.nets, Take(train, n), t.optimizer, t.precision,
                                                                 **common))[0] / n
        groups = np.random.RandomState(0).randint(1, 5, train.num_samples)
        alpha = group_alphas(groups, config.alphas, device)
        train_epoch(*t.nets, Take(train, warm), t.optimizer, t.precision, sample_alpha=alpha, **common)  # its graph
        result["robust_iteration_s"] = timed(lambda: train_epoch(*t.nets, Take(train, n), t.optimizer, t.precision,
                                                                 sample_alpha=alpha, **common))[0] / n
        result["first_batch_s"] = timed(lambda: next(iter(train)))[0]  # a pass's start: the PIL loader starts its workers
        result["iterations_per_epoch"] = len(train)
        evaluate(*t.nets, Take(t.loaders["test"], 2), t.precision, t.channels_last, autograd=t.computation.eval_autograd)
        for view in ("val", "test"):
            result[f"{view}_pass_s"] = timed(lambda: evaluate(*t.nets, t.loaders[view], t.precision, t.channels_last,
                                                              autograd=t.computation.eval_autograd))[0]
        if name == "default-eager":  # eager: another batch size costs no compilation
            result["test_pass_s_by_eval_batch"] = {}
            for batch in EVAL_BATCHES:
                loader = make_loader("device", data.x_test, data.y_test, batch_size=batch, device=device,
                                     mean=data.info["mean"], std=data.info["std"])
                evaluate(*t.nets, Take(loader, 1), t.precision, t.channels_last)
                result["test_pass_s_by_eval_batch"][batch] = timed(lambda: evaluate(*t.nets, loader, t.precision,
                                                                                    t.channels_last))[0]
        state = MethodState(stats={0: {}})
        result["full_set_pass_s"] = timed(lambda: full_set_pass(t, state, 0, StopFlag(), config.seed))[0]
        t.snapshots = {1: weights_snapshot(t), 2: weights_snapshot(t)}  # an early warm-up epoch's state: two kept
        result["state_host_copy_s"], saved = timed(lambda: resume_state(t, state, 2, device))
        path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"gpu_check_state_{os.getpid()}.pth.tar")
        result["state_write_s"] = timed(lambda: save_torch(saved, path))[0]
        result["state_mib"] = os.path.getsize(path) / 2**20
        os.remove(path)
        if cuda:
            result["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def _compile_with(compile_fn, extra):
    def compile_(net, **kwargs):
        return compile_fn(net, **{**kwargs, **extra})

    return compile_


def project(r, warmup_epochs):
    """Seconds per warm-up and per robust epoch, and the projected 300-epoch schedule (SCHEDULE), from one mode's figures.

    A training pass is its start plus its iterations; a state is saved after every epoch (on CUDA the training
    thread only makes the host copy, the write goes on beside the next epoch); the reference mode runs the
    full-set pass in every warm-up epoch but the one that finds the peak, the default mode once; validation and
    test run every 10th epoch and the last.
    """
    saving = r["state_host_copy_s"] if r.get("device") == "cuda" else r["state_host_copy_s"] + r["state_write_s"]
    train = r["first_batch_s"] + r["iterations_per_epoch"] * r["warmup_iteration_s"]
    robust = r["first_batch_s"] + r["iterations_per_epoch"] * r["robust_iteration_s"]
    full_passes = warmup_epochs - 1 if r["loader"] == "torchvision" else 1
    warm_epoch = train + saving + (r["full_set_pass_s"] if r["loader"] == "torchvision" else 0)
    robust_epoch = robust + saving
    n_epoch, every = SCHEDULE["n_epoch"], SCHEDULE["eval_every"]
    evaluations = len(range(0, n_epoch, every)) + 1
    total = (warmup_epochs * (train + saving) + (n_epoch - warmup_epochs) * robust_epoch + full_passes * r["full_set_pass_s"]
             + evaluations * (r["val_pass_s"] + r["test_pass_s"]))
    return {"warmup_epoch_s": warm_epoch, "robust_epoch_s": robust_epoch, "mean_epoch_s": total / n_epoch,
            "projected_300_epochs_min": total / 60, "assumed_warmup_epochs": warmup_epochs}


# --- the whole check --------------------------------------------------------------------------------------------------
def run_tests(timeout):
    """The cuda-marked tests, in one process (they share the one GPU)."""
    import importlib.util

    if importlib.util.find_spec("pytest") is None:
        return {"status": "not run: pytest is not installed"}
    start = time.time()
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-n", "0", "-p", "no:cacheprovider", "-rs",
           os.path.join(ROOT, "tests", "test_cuda.py")]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        return {"status": f"timed out after {timeout} s", "output": (err.stdout or b"")[-4000:].decode(errors="replace")
                if isinstance(err.stdout, bytes) else str(err.stdout)[-4000:]}
    output = proc.stdout + proc.stderr
    summary = [line for line in output.splitlines() if " passed" in line or " failed" in line or " skipped" in line
               or " error" in line]
    return {"status": "passed" if proc.returncode == 0 else f"failed (exit {proc.returncode})",
            "summary": summary[-1] if summary else output.strip().splitlines()[-1:], "seconds": time.time() - start,
            "output": output[-6000:]}


def run_mode(name, device, tiny, timeout):
    cmd = [sys.executable, os.path.abspath(__file__), f"--child={name}", "--device", device] + ["--tiny"] * tiny
    start = time.time()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:  # the rest of the time budget ran out: not the mode's failure
        return {"mode": name, "status": f"skipped: the time budget (--budget_s) ran out after {timeout:.0f} s of it"}
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        return {"mode": name, "status": f"failed: {lines[-1] if lines else f'exit {proc.returncode}'}",
                "stderr": proc.stderr[-3000:]}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result.setdefault("status", "measured")
    result.update(device=device.split(":")[0], process_s=time.time() - start)
    return result


def fmt(value, digits=2):
    return "" if value is None else f"{value:.{digits}f}"


def rows_of(results, reference):
    rows = []
    for r in results:
        if r.get("status") != "measured":
            rows.append([r["mode"], flags_of(r["mode"])] + [""] * 7 + [r["status"]])
            continue
        ratio = reference["mean_epoch_s"] / r["mean_epoch_s"] if reference else None
        rows.append([r["mode"], flags_of(r["mode"]), fmt(r["warmup_epoch_s"]), fmt(r["robust_epoch_s"]), fmt(r["projected_300_epochs_min"], 1),
                     fmt(r.get("peak_gpu_memory_gib")), fmt(ratio) + ("x" if ratio else ""), fmt(r["first_iterations_s"], 1),
                     arithmetic(r), "measured"])
    return rows


def flags_of(name):
    flags, compile_mode, _ = MODES[name]
    words = []
    for key, value in flags.items():
        if key == "compile":
            words += [] if value else ["--no_compile"]
        elif value is True:
            words.append(f"--{key}")
        else:
            words.append(f"--{key} {value}")
    return " ".join(words + [f"(torch.compile mode {compile_mode})"] * bool(compile_mode)) or "(none)"


def arithmetic(r):
    words = [r["precision"]] + ["compiled"] * r["compile"]
    if r.get("device") == "cuda":  # determinism and TF32 are CUDA settings
        words += ["TF32"] * r["tf32"] + ["nondeterministic"] * (not r["deterministic"])
    return ", ".join(words)


HEADER = ["mode", "flags", "s / warm-up epoch", "s / robust epoch", "300 epochs (min)", "peak GPU GiB", "vs reference",
          "first iterations (s)", "arithmetic", "status"]


def markdown(rows):
    return ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)] + ["| " + " | ".join(r) + " |" for r in rows]


def verdicts(results):
    by_name = {r["mode"]: r for r in results if r.get("status") == "measured"}
    reference = by_name.get("reference")
    out = []
    for name, target in TARGETS.items():
        if name in by_name and reference:
            ratio = reference["mean_epoch_s"] / by_name[name]["mean_epoch_s"]
            out.append(f"{name}: {ratio:.2f}x the reference mode per epoch (target {target:.0f}x): "
                       f"{'met' if ratio >= target else 'not met'}")
    if "amp" in by_name:
        minutes = by_name["amp"]["projected_300_epochs_min"]
        out.append(f"amp (--amp, compiled): 300 epochs projected at {minutes:.1f} min (target under {AMP_BUDGET_MIN} min on an H100-class "
                   f"GPU): {'met' if minutes < AMP_BUDGET_MIN else 'not met'}")
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu (with --tiny)")
    p.add_argument("--tiny", action="store_true", help="a tiny size: shows the check works (on the CPU, in under a minute)")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "gpu_check"),
                   help="writes <out>.json and <out>.md")
    p.add_argument("--modes", nargs="+", default=None, help=f"modes to time (default: all for the device): {', '.join(MODES)}")
    p.add_argument("--skip_tests", action="store_true", help="skip the cuda-marked tests")
    p.add_argument("--budget_s", type=float, default=450, help="stop timing further modes after this many seconds in all")
    p.add_argument("--warmup_epochs", type=int, default=15,
                   help="warm-up epochs assumed in the 300-epoch projection (the overfitting epoch is found after them)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    size = TINY if args.tiny else FULL
    if args.child:
        from utils.errors import UsageError

        try:
            print(json.dumps(measure_mode(args.child, args.device, size)))
        except UsageError as err:  # a mode this device cannot run (--amp on a CPU without native bf16)
            print(json.dumps({"mode": args.child, "status": f"not measured: {err}"}))
        return 0
    from utils.errors import BKDError
    from utils.files import save_json
    from utils.runtime import machine_info, resolve_device

    start = time.time()
    try:
        device = resolve_device(args.device)
    except BKDError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    kind = device.type
    unknown = [m for m in args.modes or () if m not in MODES]
    if unknown:
        print(f"error: --modes {', '.join(unknown)}: unknown; use {', '.join(MODES)}", file=sys.stderr)
        return 2
    modes = [m for m in (args.modes or MODES) if kind in MODES[m][2]]
    report = {"command": "python benchmarks/gpu_check.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "size": size, "schedule": SCHEDULE, "machine": machine_info(device)}
    print(f"== machine: {_machine_line(report['machine'])}", flush=True)
    if not args.skip_tests:
        print("== the cuda-marked tests (tests/test_cuda.py)", flush=True)
        report["tests"] = run_tests(timeout=max(60, args.budget_s * 0.45))
        print(f"   {report['tests']['status']}: {report['tests'].get('summary', '')}", flush=True)
    results = []
    for name in modes:
        left = args.budget_s - (time.time() - start)
        if left < 20:
            results.append({"mode": name, "status": "skipped: the time budget (--budget_s) is spent"})
            continue
        print(f"== {name}", flush=True)
        r = run_mode(name, args.device, args.tiny, timeout=left)
        if r["status"] == "measured":
            r.update(project(r, args.warmup_epochs))
        results.append(r)
        print(f"   {r['status']}" + (f": {r['warmup_epoch_s']:.2f} s per warm-up epoch, {r['robust_epoch_s']:.2f} s per "
                                     f"robust epoch" if r["status"] == "measured" else ""), flush=True)
    for name in MODES:
        if name not in modes:
            results.append({"mode": name, "status": "not measured: CUDA only" if kind not in MODES[name][2] else
                            "not measured: not asked (--modes)"})
    results.sort(key=lambda r: list(MODES).index(r["mode"]))
    reference = next((r for r in results if r["mode"] == "reference" and r.get("status") == "measured"), None)
    rows = rows_of(results, reference)
    report.update(results=results, verdicts=verdicts(results), wall_s=time.time() - start)
    lines = [f"# GPU check: {_machine_line(report['machine'])}", "", f"`{report['command']}`, {report['wall_s']:.0f} s; "
             f"size: {size['train']} images ({int(size['train'] * 0.9)} training), {size['test']} test, width "
             f"{size['width']}, batch {size['batch']}; {size['timed_iters']} timed iterations per phase after "
             f"{size['warmup_iters']}; 300-epoch projection with {args.warmup_epochs} warm-up epochs.", ""]
    if "tests" in report:
        lines += [f"cuda tests: {report['tests']['status']} ({report['tests'].get('summary', '')})", ""]
    lines += markdown(rows) + [""] + [f"* {v}" for v in report["verdicts"]]
    sweep = next((r.get("test_pass_s_by_eval_batch") for r in results if r.get("test_pass_s_by_eval_batch")), None)
    if sweep:
        lines += [f"* test pass ({size['test']} images, default mode eager) by evaluation batch: "
                  + ", ".join(f"{b}: {s:.2f} s" for b, s in sweep.items())]
    save_json(report, args.out + ".json")
    with open(args.out + ".md", "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"written to {os.path.relpath(args.out, ROOT)}.json and .md")
    failed = [r for r in results if r.get("status", "").startswith(("failed", "timed out"))]
    tests_failed = report.get("tests", {}).get("status", "passed").startswith(("failed", "timed out"))
    return 1 if failed or tests_failed else 0


def _machine_line(m):
    gpu = m.get("gpu")
    versions = m["versions"]
    where = (f"{gpu['name']} (compute capability {gpu['compute_capability']}, {gpu['memory_gib']} GiB, driver {gpu['driver']}, "
             f"CUDA {gpu['cuda']}, cuDNN {gpu['cudnn']})" if gpu else f"{m['cpu_model']} ({m['cpu_capability']})")
    return f"{where}, torch {versions['torch']}, {m['cpu_count']} CPUs"


if __name__ == "__main__":
    sys.exit(main())
