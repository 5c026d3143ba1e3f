"""The GPU check: one command that returns what a first call on a lent GPU must know, most needed first, as it goes.

    python3 benchmarks/gpu_check.py --out $OUT/gpu_check --budget_s 480  # on a lent GPU (docs/gpu.md)
    python benchmarks/gpu_check.py --device cpu --tiny --out /tmp/gc      # every step, tiny, on the CPU
    python benchmarks/gpu_check.py --prepare_data .gpu_data               # here: the real-data step's files

The plan (PLAN), the answers no CPU can give first, then the rest as time allows:
1. machine: GPU, driver, CUDA, cuDNN, torch, with the run's own TF32 and determinism settings;
   compile cache: does a second process load what a first compiled (two small inductor compilations in the shared
   cache, which outlives the call: --compile_cache)? Until that is shown, a child of an already compiled mode is given
   the time to compile again;
2. correctness at the default configuration (width 64, compiled, deterministic, TF32), on synthetic CIFAR-shaped
   data: two identical seeded runs bit-equal (weights, detection.npy, agreement.npy), and a run killed with SIGKILL
   mid-epoch then resumed bit-equal to the uninterrupted one. Its first run compiles the graphs and fills the one
   inductor cache every later child loads from;
3. throughput of the reference, default and --amp modes at full scale on synthetic data (45,000 training images,
   width 64, batch 128): seconds per warm-up and robust epoch (iterations timed in steady state, each pass's
   start-up apart), the projected 300-epoch schedule, peak memory, achieved TFLOP/s against the card's peak for the
   mode's precision, and the ratio to the reference mode of the same call;
4. real data: the quick preset on CIFAR-10N `worst` through run.sh (all three scripts), from `--real_data`;
5. then: correctness with --amp, the other modes' throughput, the `cuda`-marked tests (tests/test_cuda.py, without
   pytest-xdist's options), and a smoke run through the training script of each mode not yet run through it.

Time: before a child starts, what it will take is predicted from what this call has measured so far (Estimates);
a child that does not fit in what is left of --budget_s is skipped, saying so ("skipped: 40 s left, needs ~90 s").
Each child runs in a process group of its own with a limit of a multiple of its estimate, within the budget, and is
killed with everything it started when that runs out: a child that timed out is reported so, never as a result.
Every running child is polled while the check waits for one, and none outlives the check. After every item of a
step, <out>.json and <out>.md are rewritten (atomically), and each child's output reaches <out>.log when it ends:
a call killed at its time limit still returns everything it finished; SIGTERM or Ctrl-C stops the check the same
way. Needs only torch, torchvision, numpy and pytest; nothing is downloaded.

--tiny on the CPU: a few hundred images of width 8, a few iterations, and torch.compile with dynamo's eager backend
(the code path, not inductor's speed, which would take longer than the whole check).
"""

import argparse
import dataclasses
import itertools
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bkd.report import COLUMNS, markdown  # (numpy only: no matplotlib needed)
from bkd.utils.files import atomic_path, save_json, save_torch

TRAIN = os.path.join(ROOT, "blind_knowledge_dist_training.py")
PREPARED = os.path.join(ROOT, ".gpu_data")  # --prepare_data's default folder (git-ignored; the GPU call carries it)


@dataclass(frozen=True)
class Mode:
    flags: dict  # training flags, as TrainConfig fields
    devices: tuple = ("cpu", "cuda")
    compile_mode: str = None  # torch.compile's mode (None: its default)
    fill_uninitialized_memory: bool = True  # torch's filling of new memory under deterministic algorithms
    note: str = ""


CUDA = ("cuda",)
# In the order the throughput step runs them: what matters most first.
MODES = {
    "reference": Mode(dict(reference=True, num_workers=4)),
    "default": Mode(dict(compile=True)),
    "amp": Mode(dict(amp=True, compile=True)),
    "default-eager": Mode(dict(compile=False)),
    "amp-eager": Mode(dict(amp=True, compile=False)),
    "strict-fp32": Mode(dict(strict_fp32=True, compile=True), CUDA),
    "nondeterministic": Mode(dict(cudnn_benchmark=True, compile=True), CUDA),
    "no-fill": Mode(
        dict(compile=True),
        CUDA,
        fill_uninitialized_memory=False,
        note="torch.utils.deterministic.fill_uninitialized_memory off",
    ),
    "amp-nondeterministic": Mode(dict(amp=True, cudnn_benchmark=True, compile=True), CUDA),
    "nchw": Mode(dict(compile=True, no_channels_last=True), CUDA),
    "cuda-graphs": Mode(
        dict(compile=True),
        CUDA,
        compile_mode="reduce-overhead",
        note="torch.compile mode reduce-overhead, outputs copied out",
    ),
}
CORRECTNESS = {"default": (), "amp": ("--amp",)}  # width 64 and compiled by default; flags added to the run's
# the default mode's test pass at other evaluation batch sizes (the default: 1024 on CUDA)
EVAL_BATCHES = (256, 1024, 4096)

# Throughput sizes, and the sizes of the short runs of the smoke and correctness steps (width and batches as at full
# scale on the GPU, so that the smoke runs compile the very graphs the later steps use).
FULL = dict(train=50_000, test=10_000, classes=10, width=64, batch=128, warmup_iters=10, timed_iters=40)
TINY = dict(train=640, test=128, classes=10, width=8, batch=32, warmup_iters=2, timed_iters=4)
RUN = dict(n_train=2560, n_test=2048, flags=["--width", "64"])
TINY_RUN = dict(n_train=320, n_test=128, flags=["--width", "8", "--batch_size", "32", "--eval_batch_size", "64"])
# 7 epochs: the split forced at epoch 0 is acted upon after epoch 5 (bkd.method.first_detectable_epoch), then robust
RUN_FLAGS = [
    "--n_epoch",
    "7",
    "--overfitting_epoch",
    "0",
    "--lr_step",
    "4",
    "--noisy_val_freq",
    "2",
    "--clean_test_freq",
    "3",
    "--print_freq",
    "1",
    "--noise_type",
    "worst",
    "--no_download",
    "--seed",
    "0",
]
KILL_EPOCH = 3  # the correctness step's kill: in this epoch, with an earlier epoch's resume state on disk

SCHEDULE = dict(n_epoch=300, eval_every=10)  # the original's: validation and test every 10 epochs and the last
TARGETS = {"default": 3.0, "amp": 6.0}  # per-epoch speed-up over the reference mode (the targets)
AMP_BUDGET_MIN, DEFAULT_BUDGET_MIN = 15, 20  # the 300-epoch schedule projected on an H100-class GPU
# Dense peak TFLOP/s by precision (NVIDIA's datasheets; the SXM parts): what "achieved" is measured against.
PEAK_TFLOPS = {
    "H200": {"fp32": 67, "tf32": 495, "bf16": 990, "fp16": 990},
    "H100": {"fp32": 67, "tf32": 495, "bf16": 990, "fp16": 990},
    "A100": {"fp32": 19.5, "tf32": 156, "bf16": 312, "fp16": 312},
}
# (the report's order; PLAN runs them)
STEPS = ("machine", "compile_cache", "correctness", "throughput", "real_data", "cuda_tests", "smoke")
SIMULATED_COMPILE_ENV = "BKD_GPU_CHECK_SIMULATED_COMPILE_S"  # --simulate_compile_s: a slow compile, for the tests
FAILED_COMPILE_ENV = "BKD_GPU_CHECK_SIMULATED_COMPILE_FAILURE"  # a compilation that fails, for the tests
# The inductor (and triton) cache every child of a call shares, outside its work folder: it outlives the call, so that
# a second call on the still-warm machine loads what the first compiled (--compile_cache names another; without it,
# a $TORCHINDUCTOR_CACHE_DIR the caller set is taken).
COMPILE_CACHE = os.path.join(tempfile.gettempdir(), "bkd_gpu_check_compile_cache")
QUICK_RUN = "cifar10_worst_seed_0_quick"
# the real-data step at the CPU rehearsal's size
TINY_QUICK = [
    "--subset",
    "500",
    "--width",
    "8",
    "--n_epoch",
    "6",
    "--lr_step",
    "5",
    "--noisy_val_freq",
    "5",
    "--clean_test_freq",
    "5",
    "--print_freq",
    "50",
]


# --- children: each in a process group of its own, its output in a file, killed with its group at its deadline --------
@dataclass(eq=False)
class Child:
    name: str
    cmd: list
    log_dir: str
    timeout: float
    env: dict = None
    on_end: object = None  # called once with the child when it ends (its log goes to <out>.log then)
    proc: subprocess.Popen = None
    timed_out: bool = False
    stopped: bool = False  # killed on purpose (the correctness step's kill mid-epoch), not at its limit
    start: float = field(default_factory=time.time)
    end: float = None

    RUNNING = set()  # (class attribute) the process groups to stop when the check is stopped

    def __post_init__(self):
        self.path = os.path.join(self.log_dir, f"{self.name}.out")
        with open(self.path, "w") as out:
            self.proc = subprocess.Popen(
                self.cmd,
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a process group (and session) of its own, made safely after CUDA started
            )
        Child.RUNNING.add(self)

    def poll(self):
        if self.proc.poll() is None and time.time() - self.start > self.timeout:
            self.timed_out = True
            self._kill()
        if self.proc.poll() is not None and self.end is None:
            self.end = time.time()
            Child.RUNNING.discard(self)
            if self.on_end is not None:
                self.on_end(self)
        return self.proc.poll()

    def seconds(self):
        return round((self.end or time.time()) - self.start, 1)

    def stop(self):
        """Kill it on purpose (it is not then a failure of its own)."""
        self.stopped = self.proc.poll() is None
        self._kill()
        self.poll()

    def _kill(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the child and everything it started (pytest's runs, run.sh's)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def wait(self):
        while self.poll() is None:
            time.sleep(0.05)
        return self

    def output(self):
        with open(self.path, errors="replace") as fh:
            return fh.read()

    def status(self):
        """passed, timed out (never a result), stopped (on purpose), or failed with its last line."""
        if self.timed_out:
            return f"timed out after {self.timeout:.0f} s (killed with its process group)"
        if self.stopped:
            return "stopped on purpose"
        if self.proc.returncode != 0:
            lines = [line for line in self.output().splitlines() if line.strip()]
            return f"failed (exit {self.proc.returncode}): {lines[-1][:300] if lines else ''}"
        return "passed"

    @property
    def passed(self):
        return self.status() == "passed"


class Stopped(Exception):
    """SIGTERM (a time limit's `timeout`) or SIGINT: stop the children, keep what is written."""


def stop_children(signum, frame):
    for child in list(Child.RUNNING):
        child._kill()
    raise Stopped(signum)


class Estimates:
    """How long a child will take: what a child of its kind took in this call, else a prior scaled by how much slower
    than its prior this machine has been so far (the slowest ratio seen: a loaded machine is not taken for a fast one).

    Kinds: `run` (a short training run through the script), `run_cold` (the first of a compiled mode: its graphs are
    compiled, then cached for every later child), `throughput`, `throughput_cold`, `real_data`, `cuda_tests`.
    """

    PRIORS = {
        "cuda": {
            "run": 45,
            "run_cold": 130,
            "throughput": 60,
            "throughput_cold": 130,
            "real_data": 150,
            "cuda_tests": 150,
            "cache_probe": 30,
        },
        "cpu": {
            "run": 20,
            "run_cold": 30,
            "throughput": 25,
            "throughput_cold": 30,
            "real_data": 75,
            "cuda_tests": 20,
            "cache_probe": 25,
        },
    }

    def __init__(self, kind):
        self.priors = self.PRIORS["cuda" if kind == "cuda" else "cpu"]
        self.measured, self.ratios = {}, []

    def predict(self, kind):
        if kind in self.measured:
            return self.measured[kind]
        return self.priors[kind] * (max(self.ratios) if self.ratios else 1.0)

    def record(self, kind, seconds):
        self.measured[kind] = max(self.measured.get(kind, 0.0), seconds)
        self.ratios.append(seconds / self.priors[kind])


# --- the modes as the training script runs them ---------------------------------------------------------------------
def cli_flags(mode):
    words = []
    for key, value in MODES[mode].flags.items():
        if key == "compile":
            words.append("--compile" if value else "--no_compile")
        elif value is True:
            words.append(f"--{key}")
        else:
            words += [f"--{key}", str(value)]
    return words


def patch_for(mode, tiny_cpu):
    """What a mode changes beyond its flags, in this process: torch.compile's mode (the CPU rehearsal: dynamo's eager
    backend) and torch's filling of new memory."""
    import functools

    import torch

    import bkd.run
    from bkd.utils import cuda

    spec = MODES[mode]
    extra = {"backend": "eager"} if tiny_cpu else ({"mode": spec.compile_mode} if spec.compile_mode else {})
    original = torch.compile

    def compile_(net, **kwargs):
        if extra:  # a backend or mode of its own: inductor's options do not apply
            kwargs.pop("options", None)
        compiled = original(net, **{**kwargs, **extra})
        compiled = simulated_compile(compiled, mode) if os.environ.get(SIMULATED_COMPILE_ENV) else compiled
        return copied_out(compiled) if spec.compile_mode == "reduce-overhead" else compiled

    torch.compile = compile_
    if os.environ.get(FAILED_COMPILE_ENV):  # (the tests: a compilation that fails, as torch's own would)
        torch.compile = failing_compile
    if not spec.fill_uninitialized_memory:
        bkd.run.cuda_settings = functools.partial(cuda.cuda_settings, fill_uninitialized_memory=False)


def failing_compile(net, **kwargs):
    """torch.compile whose compilation fails at the first call with an error of dynamo's (bkd.engine falls back)."""
    from torch._dynamo.exc import TorchDynamoException

    class SimulatedCompileFailure(TorchDynamoException):
        pass

    def call(x):
        raise SimulatedCompileFailure("the simulated compilation failed")

    return call


def compile_outcome(output):
    """What a training run's networks ran as, from its own lines: compiled, eager after a failed compilation (its
    reason), or eager (not asked, or refused on this CPU)."""
    for line in output.splitlines():
        if "torch.compile failed" in line:
            return "eager: " + line.split("[bkd] ", 1)[-1].split(";", 1)[0]
    return "compiled" if "torch.compile: compiling the networks" in output else "eager"


def probe_compile_cache(device_name, result_path):
    """A small network compiled with inductor (forward only): what inductor's FX graph cache missed and hit. Two such
    processes in one cache folder show whether the second loads what the first compiled."""
    import torch
    from torch._dynamo.utils import counters

    started = time.time()
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 8 * 8, 10)
    ).to(device_name)
    with torch.no_grad():
        torch.compile(net)(torch.randn(4, 3, 8, 8, device=device_name))
    inductor = counters["inductor"]
    result = {"misses": inductor["fxgraph_cache_miss"], "hits": inductor["fxgraph_cache_hit"]}
    save_json(dict(result, compile_s=time.time() - started), result_path)


def simulated_compile(fn, mode):
    """`fn`, whose first call sleeps $BKD_GPU_CHECK_SIMULATED_COMPILE_S seconds unless an earlier process of the check
    compiled `mode` (a file in the shared compile cache says so): a slow compilation and its cache, on the CPU."""
    seconds = float(os.environ[SIMULATED_COMPILE_ENV])
    marker = os.path.join(os.environ.get("TORCHINDUCTOR_CACHE_DIR", tempfile.gettempdir()), f"simulated_compile_{mode}")
    first = []

    def call(x):
        if not first:
            first.append(True)
            if not os.path.exists(marker):
                time.sleep(seconds)
                open(marker, "w").close()
        return fn(x)

    return call


def copied_out(fn):
    """CUDA graphs (mode="reduce-overhead") hand out their static output memory, which the next replay overwrites:
    bkd.engine.Nets calls the teacher and then the student before it reads either output, so each is copied out."""

    def call(x):
        return fn(x).clone()

    return call


def child_script(mode, tiny_cpu, argv):
    """The training script with a mode's patches (the smoke and correctness runs)."""
    import runpy

    patch_for(mode, tiny_cpu)
    sys.argv = [TRAIN] + argv
    runpy.run_path(TRAIN, run_name="__main__")


def write_synthetic(root, run):
    from tests.synthetic import write_dataset

    write_dataset(root, n_train=run["n_train"], n_test=run["n_test"])
    return ["--data_root", root, "--noise_path", os.path.join(root, "CIFAR-10_human.pt")]


# --- throughput: one mode in a process of its own ---------------------------------------------------------------------
class Steps:
    """`n` batches from a running iterator of `loader`, as train takes a loader: a pass's start-up (the PIL
    loader starts its workers) is timed apart, and the iterations in steady state."""

    def __init__(self, loader, iterator, n):
        self.iterator, self.n = iterator, n
        self.num_samples, self.batch_size = loader.num_samples, loader.batch_size

    def __len__(self):
        return self.n

    def __iter__(self):
        return itertools.islice(self.iterator, self.n)


def synthetic_data(size, seed=0):
    """Random CIFAR-shaped images (the speed does not depend on content) as a run's data, 10 % validation."""
    import numpy as np

    from bkd.config import TrainConfig
    from bkd.data.custom import from_arrays
    from bkd.data.datasets import CUSTOM, DataSelection, input_dataset

    rng = np.random.RandomState(seed)
    images = rng.randint(0, 256, (size["train"], 32, 32, 3), dtype=np.uint8)
    labels = np.arange(size["train"]) % size["classes"]
    x_test = rng.randint(0, 256, (size["test"], 32, 32, 3), dtype=np.uint8)
    y_test = np.arange(size["test"]) % size["classes"]
    arrays = from_arrays(images, labels, test=(x_test, y_test))
    return input_dataset(DataSelection(dataset=CUSTOM, arrays=arrays), TrainConfig(seed=seed, val_ratio=0.1))


def training_flops(width, batch, classes):
    """Floating-point operations of one training iteration: forward and backward of teacher and student (counted by
    torch's FlopCounterMode on meta tensors: convolutions and products, the tensor-core work)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from bkd.models import PreResNet18

    with torch.device("meta"):
        net = PreResNet18(classes, width)
        x = torch.empty(batch, 3, 32, 32)
    with FlopCounterMode(display=False) as counter:
        net(x).sum().backward()
    return 2 * counter.get_total_flops()


def peak_tflops(gpu_name, precision):
    for key, peaks in PEAK_TFLOPS.items():
        if gpu_name and key in gpu_name:
            return peaks.get(precision)
    return None


def measure_mode(name, device_name, size, result_path):
    """Time one mode the way a run computes, writing its figures to `result_path` after every phase."""
    import numpy as np
    import torch

    from bkd.config import TrainConfig, resolve_computation
    from bkd.data.loaders import LoaderSpec, make_loader
    from bkd.engine import evaluate
    from bkd.method import group_alphas
    from bkd.run import Job, Run
    from bkd.utils.cuda import cuda_settings
    from bkd.utils.devices import resolve_device
    from bkd.utils.logfmt import quiet
    from bkd.utils.seeds import set_global_seeds

    spec = MODES[name]
    device = resolve_device(device_name)
    cuda = device.type == "cuda"
    if spec.flags.get("compile"):
        patch_for(name, tiny_cpu=not cuda and size is TINY)
    config = TrainConfig(width=size["width"], batch_size=size["batch"], **spec.flags)
    computation = resolve_computation(config, device)
    data = synthetic_data(size)

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    def timed(fn):
        sync()
        start = time.perf_counter()
        out = fn()
        sync()
        return time.perf_counter() - start, out

    precision = computation.precision if computation.amp else ("tf32" if cuda and computation.tf32 else "fp32")
    result = {
        "mode": name,
        "status": "running",
        "precision": precision,
        "compile": computation.compile,
        "deterministic": computation.deterministic,
        "tf32": computation.tf32,
        "loader": computation.loader,
        "fill_uninitialized_memory": spec.fill_uninitialized_memory,
        "eval_batch_size": computation.eval_batch_size,
        "flops_per_iteration": training_flops(size["width"], size["batch"], size["classes"]),
    }

    def phase(key, fn, per=1):
        result[key] = timed(fn)[0] / per
        save_json(result, result_path)

    with cuda_settings(device, computation.deterministic, computation.tf32, spec.fill_uninitialized_memory):
        set_global_seeds(0)
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        job = Job(
            dataclasses.replace(config, n_epoch=SCHEDULE["n_epoch"], print_freq=10**9), data, device, computation, quiet
        )
        result["build_s"], t = timed(lambda: Run(job))
        train = t.loaders["train"]
        warm, n = size["warmup_iters"], size["timed_iters"]

        def iterations(iterator, count, sample_alpha=None):
            def steps():
                t.loaders["train"], t.sample_alpha = Steps(train, iterator, count), sample_alpha
                t.train()

            return steps

        phase("first_batch_s", lambda: next(iter(train)))  # a pass's start: the PIL loader starts its workers
        it = iter(train)
        phase("first_iterations_s", iterations(it, warm))  # compilation, allocator, autotuning
        phase("warmup_iteration_s", iterations(it, n), per=n)
        groups = np.random.RandomState(0).randint(1, 5, train.num_samples)
        alpha = group_alphas(groups, config.alphas, device)
        it = iter(train)
        iterations(it, warm, sample_alpha=alpha)()  # the robust phase's first iterations
        phase("robust_iteration_s", iterations(it, n, sample_alpha=alpha), per=n)
        result["iterations_per_epoch"] = len(train)
        result["train_tflops"] = result["flops_per_iteration"] / result["warmup_iteration_s"] / 1e12
        t.loaders["train"] = train
        # the evaluation graph
        evaluate(t.nets, Steps(t.loaders["test"], iter(t.loaders["test"]), 2), autograd=t.computation.eval_autograd)
        for view in ("val", "test"):
            phase(
                f"{view}_pass_s",
                lambda view=view: evaluate(t.nets, t.loaders[view], autograd=t.computation.eval_autograd),
            )
        if name == "default-eager":  # eager: another batch size costs no compilation
            sweep = result["test_pass_s_by_eval_batch"] = {}
            for batch in EVAL_BATCHES:
                loader = make_loader(
                    data.x_test, data.y_test, LoaderSpec(batch, device, data.info["mean"], data.info["std"])
                )
                evaluate(t.nets, Steps(loader, iter(loader), 1))
                sweep[batch] = timed(lambda loader=loader: evaluate(t.nets, loader))[0]
                save_json(result, result_path)
        t.state.stats[0] = {}
        phase("full_set_pass_s", lambda: t.calc_noise_probability(0))
        t.snapshots = {1: t.weights(), 2: t.weights()}  # an early warm-up epoch's state: two kept
        t.epoch = 2
        result["state_host_copy_s"], saved = timed(t.resume_state)
        path = os.path.join(os.path.dirname(result_path), f"state_{name}.pth.tar")
        phase("state_write_s", lambda: save_torch(saved, path))
        result["state_mib"] = os.path.getsize(path) / 2**20
        os.remove(path)
        if cuda:
            result["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        result.update(ran_as(t.compiled, config, computation, device))
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["status"] = "measured"
    save_json(result, result_path)


def ran_as(pair, config, computation, device):
    """What the networks of a measured run ran as, read from the run itself (not from its flags): compiled, or eager and
    why (compilation failed and fell back, refused on this CPU, or not asked)."""
    from bkd.config import compile_refusal

    if pair is not None and pair.compiled is not None:
        return {"compiled": True, "eager_because": None}
    if pair is not None:
        why = pair.fallback
    elif config.compile and not computation.compile:
        why = compile_refusal(config, device) or "--reference runs eager"
    else:
        why = "not asked"
    return {"compiled": False, "eager_because": why}


def project(r, warmup_epochs):
    """Seconds per warm-up and per robust epoch, and the projected 300-epoch schedule (SCHEDULE), from one mode's
    figures.

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
    total = (
        warmup_epochs * (train + saving)
        + (n_epoch - warmup_epochs) * robust_epoch
        + full_passes * r["full_set_pass_s"]
        + evaluations * (r["val_pass_s"] + r["test_pass_s"])
    )
    return {
        "warmup_epoch_s": warm_epoch,
        "robust_epoch_s": robust_epoch,
        "mean_epoch_s": total / n_epoch,
        "projected_300_epochs_min": total / 60,
        "assumed_warmup_epochs": warmup_epochs,
    }


# --- the check's steps ------------------------------------------------------------------------------------------------
# The plan: first the answers no CPU can give (the default configuration deterministic and resuming bit for bit on
# CUDA; the steady-state speed of the reference, default and --amp modes; the quick preset on real data), then the
# other configurations, modes and tests as time allows. Each entry: a step and the items it takes (None: all left).
PLAN = (
    ("machine", None),
    ("compile_cache", None),
    ("correctness", ("default",)),
    ("throughput", ("reference", "default", "amp")),
    ("real_data", None),
    ("correctness", ("amp",)),
    ("throughput", None),
    ("cuda_tests", None),
    ("smoke", None),
)
RESERVE_S = 10  # of the budget, kept for the report after the last child


def summarize(items):
    """A step's status from its items' statuses (configurations, modes, runs)."""
    ok = ("passed", "measured", "done")
    failed = [k for k, r in items.items() if str(r.get("status")).startswith(("failed", "timed out", "interrupted"))]
    done = [k for k, r in items.items() if r.get("status") in ok]
    others = [f"{k} ({r.get('status')})" for k, r in items.items() if k not in failed and k not in done]
    if failed:
        return f"failed: {', '.join(failed)}"
    if not others:
        return "passed" if done else "nothing to do"
    return (f"passed: {', '.join(done)}; " if done else "") + "not done: " + "; ".join(others)


class Check:
    """The check's state: its arguments, where it works, what it has measured, and the report it rewrites as it goes."""

    LIMIT_FACTOR, LIMIT_MARGIN_S = 2.5, 60  # a child's limit: its estimate times this, or plus that, whichever is more

    def __init__(self, args, device):
        self.args, self.device = args, device
        self.kind = device.type
        self.start = args.started
        self.work = tempfile.mkdtemp(prefix="bkd_gpu_check_", dir=args.work_dir)
        self.logs = os.path.join(self.work, "logs")
        os.makedirs(self.logs)
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        # one inductor (and triton) cache for every child: what one compiles, the next loads; compile workers bounded
        # so that the children side by side share the cores instead of starting 16 workers each
        # (--compile_cache first: torch itself sets $TORCHINDUCTOR_CACHE_DIR to its default in a process that compiled)
        cache = args.compile_cache or os.environ.get("TORCHINDUCTOR_CACHE_DIR") or COMPILE_CACHE
        self.env["TORCHINDUCTOR_CACHE_DIR"] = cache
        self.env["TRITON_CACHE_DIR"] = os.path.join(cache, "triton")
        self.env.setdefault("TORCHINDUCTOR_COMPILE_THREADS", str(max(1, (os.cpu_count() or 1) // args.jobs)))
        if self.kind == "cpu":  # the rehearsal: idle OpenMP threads sleep (a busy neighbour does not stall them), and a
            # tiny network runs on one thread (it gains little from more), so that another process's load slows it least
            self.env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
            if args.tiny:
                self.env.setdefault("OMP_NUM_THREADS", "1")
        if args.simulate_compile_s:
            self.env[SIMULATED_COMPILE_ENV] = str(args.simulate_compile_s)
        self.run_size = TINY_RUN if args.tiny else RUN
        self.data_flags = None
        self.estimates = Estimates(self.kind)
        self.cached = set()  # modes whose compiled graphs are in the shared cache (a child of theirs finished)
        self.cache_proven = False  # a second process loaded what a first compiled, on this machine (compile_cache)
        self.report = {
            "command": "python benchmarks/gpu_check.py " + " ".join(args.argv),
            "device": str(device),
            "budget_s": args.budget_s,
            "compile_cache": self.env["TORCHINDUCTOR_CACHE_DIR"],
            "steps": {},
        }
        open(args.out + ".log", "w").close()

    def left(self):
        return self.args.budget_s - (time.time() - self.start)

    def modes(self):
        return [m for m in MODES if self.args.modes is None or m in self.args.modes]

    def tiny_cpu(self):
        return self.args.tiny and self.kind == "cpu"

    def unavailable(self, mode):
        """Why `mode` cannot run on this device (a skip, not a failure), or None."""
        if self.kind not in MODES[mode].devices:
            return f"skipped: {'CUDA' if MODES[mode].devices == CUDA else 'another device'} only"
        if MODES[mode].flags.get("amp") and self.kind == "cpu":
            from bkd.utils.devices import cpu_native_bf16

            if not cpu_native_bf16():
                return "skipped: this CPU has no native bf16, and --amp is refused on it"
        return None

    def kind_of(self, kind, mode):
        """The estimate's kind for a child of `mode`: the first of a compiled mode compiles its graphs."""
        return f"{kind}_cold" if MODES[mode].flags.get("compile") and mode not in self.cached else kind

    def recompile(self, kind, mode=None):
        """The kind of a child of `mode` (None: the training script as a user runs it) that compiles its graphs, which
        a later child of that mode would take too if the cache were not loaded (launch)."""
        compiles = MODES[mode].flags.get("compile") if mode else self.run_size is RUN  # (width 64: compiled)
        return f"{kind}_cold" if compiles else None

    # --- children ---------------------------------------------------------------------------------------------------
    def launch(self, name, cmd, kind, env=None, recompile=None):
        """(the started Child, None), or (None, why not): a child starts only if what it is expected to take (Estimates)
        fits in what is left of the budget; its limit is a multiple of that, within the budget. `recompile`: the kind of
        the same child compiling its graphs again, which its limit allows for as long as the cache's reuse by another
        process is not shown on this machine (compile_cache)."""
        need, room = self.estimates.predict(kind), self.left() - RESERVE_S
        if need > room:
            return None, f"skipped: {max(room, 0):.0f} s left, needs ~{need:.0f} s"
        allow = need if recompile is None or self.cache_proven else max(need, self.estimates.predict(recompile))
        limit = min(max(self.LIMIT_FACTOR * allow, allow + self.LIMIT_MARGIN_S), room)
        child = Child(name, cmd, self.logs, limit, env or self.env, on_end=self.ended)
        child.kind = kind
        return child, None

    def ended(self, child):
        """A child ended: its log goes to <out>.log now, and a child that passed teaches the estimates."""
        with open(self.args.out + ".log", "a") as log:
            log.write(
                f"==== {child.name} ({child.status()}, {child.seconds()} s): {' '.join(child.cmd)}\n{child.output()}\n"
            )
        if child.passed:
            self.estimates.record(child.kind, child.seconds())

    def wait(self, *children, until=None):
        """Poll every running child (those beside these too: their limits hold) until these have ended, or `until()`."""
        while any(c.poll() is None for c in children) and not (until and until()):
            for other in list(Child.RUNNING):
                other.poll()
            time.sleep(0.05)

    def script(self, mode, run_dir, *flags):
        """The training script's command for a run of `mode` (None: the default configuration, no flags of ours)."""
        cmd = [sys.executable, os.path.abspath(__file__), "--child_script", mode or "default"] + [
            "--eager_backend"
        ] * self.tiny_cpu()
        return (
            cmd
            + ["--"]
            + (cli_flags(mode) if mode else [])
            + self.run_size["flags"]
            + RUN_FLAGS
            + self.synthetic()
            + ["--device", self.args.device, "--run_dir", run_dir, *flags]
        )

    def synthetic(self):
        if self.data_flags is None:
            self.data_flags = write_synthetic(os.path.join(self.work, "synthetic"), self.run_size)
        return self.data_flags

    def items(self, step, key):
        """The step's record of its items (configurations, modes or runs), kept across the plan's passes."""
        return self.report["steps"].setdefault(step, {}).setdefault(key, {})

    def write(self):
        self.report["wall_s"] = time.time() - self.start
        save_json(self.report, self.args.out + ".json")
        with atomic_path(self.args.out + ".md") as tmp, open(tmp, "w") as fh:
            fh.write("\n".join(summary_lines(self.report)) + "\n")

    # --- the steps --------------------------------------------------------------------------------------------------
    def machine(self, items=None):
        from bkd.config import TrainConfig, resolve_computation
        from bkd.utils.machine import machine_info

        self.report["steps"]["machine"] = {
            "status": "done",
            "facts": machine_info(self.device, resolve_computation(TrainConfig(), self.device)),
        }

    def compile_cache(self, items=None):
        """Does a second process load what a first compiled, in the shared cache? Two children compile the same small
        network with inductor; the second must hit inductor's FX graph cache and miss nothing. Until that is shown on
        this machine, a child of an already compiled mode is given the time to compile again (launch)."""
        step, children = self.report["steps"]["compile_cache"], {}
        step.update(folder=self.env["TORCHINDUCTOR_CACHE_DIR"], children=children)  # (kept as each child ends)
        for name in ("first", "second"):
            path = os.path.join(self.work, f"compile_cache_{name}.json")
            cmd = [sys.executable, os.path.abspath(__file__), "--child_cache_probe", "--result", path]
            child, why = self.launch(f"compile_cache_{name}", cmd + ["--device", self.args.device], "cache_probe")
            if child is None:
                step.update(children=children, status=why)
                return
            self.wait(child)
            record = json.load(open(path)) if child.passed and os.path.exists(path) else {}
            children[name] = dict(record, status=child.status(), seconds=child.seconds())
            self.write()
            if not child.passed:
                step.update(children=children, status=f"failed: the {name} compilation {child.status()}")
                return
        second = children["second"]
        self.cache_proven = second["hits"] > 0 and second["misses"] == 0
        step.update(
            children=children,
            proven=self.cache_proven,
            status="passed: the second process loaded what the first compiled"
            if self.cache_proven
            else f"not shown: the second process hit {second['hits']} and missed {second['misses']} (later children of "
            "compiled modes are given the time to compile again)",
        )

    def correctness(self, configs):
        results = self.items("correctness", "configs")
        for config in [c for c in configs if c in self.args.configs]:
            results[config] = {"status": "running"}
            self.write()
            try:
                results[config] = self.reproduces(config)
            except Stopped:
                raise
            except Exception as err:  # this configuration's own failure: the others' results stay
                results[config] = {"status": f"failed: {type(err).__name__}: {err}"}
            self.write()

    def reproduces(self, config):
        """Two identical runs, and a third killed with SIGKILL mid-epoch then resumed: all bit-equal."""
        mode = "amp" if config == "amp" else "default"
        if self.unavailable(mode):
            return {"status": self.unavailable(mode)}
        extra = CORRECTNESS[config]
        dirs = {k: os.path.join(self.work, "correctness", config, k) for k in ("a", "b", "killed")}
        cmd = {k: self.script(None, d, *extra) for k, d in dirs.items()}  # as a user runs it: compiled from width 16
        start = time.time()
        # compiles, fills the cache
        a, why = self.launch(f"correctness_{config}_a", cmd["a"], self.kind_of("run", mode))
        if a is None:
            return {"status": why}
        self.wait(a)
        if not a.passed:
            return {"status": f"failed: run a {a.status()}"}
        self.cached.add(mode)
        b, why = self.launch(f"correctness_{config}_b", cmd["b"], "run", recompile=self.recompile("run"))
        if b is None:
            return {"status": why}
        if self.args.jobs < 2:
            self.wait(b)
        killed = self.kill_mid_epoch(f"correctness_{config}_killed", cmd["killed"], dirs["killed"])  # beside b
        self.wait(b)
        if not b.passed:
            return {"status": f"failed: run b {b.status()}"}
        if killed["status"] != "killed mid-run":
            return dict(
                killed,
                status=killed["status"]
                if killed["status"].startswith("skipped")
                else f"failed: the run to kill {killed['status']}",
            )
        resumed, why = self.launch(
            f"correctness_{config}_resumed", cmd["killed"] + ["--resume"], "run", recompile=self.recompile("run")
        )
        if resumed is None:
            return {"status": why, "killed": killed}
        self.wait(resumed)
        if not resumed.passed:
            return {"status": f"failed: the resumed run {resumed.status()}", "killed": killed}
        same, resumed_same = equal_runs(dirs["a"], dirs["b"]), equal_runs(dirs["a"], dirs["killed"])
        return {
            "status": "passed" if not same and not resumed_same else "failed: results differ",
            "ran_as": compile_outcome(a.output()),  # (from the run's own lines)
            "identical_runs_differ_in": same,
            "resumed_run_differs_in": resumed_same,
            "killed": killed,
            "seconds": round(time.time() - start, 1),
            "flags": " ".join(list(extra) + self.run_size["flags"]),
        }

    def kill_mid_epoch(self, name, cmd, run_dir):
        """Start a run and SIGKILL it inside epoch KILL_EPOCH, once an earlier epoch's resume state is on disk. A run
        that reaches its own limit first timed out: that is not the kill, and its run directory is not read."""
        import torch

        child, why = self.launch(name, cmd, "run", recompile=self.recompile("run"))
        if child is None:
            return {"status": why}
        state, marker = os.path.join(run_dir, "state.pth.tar"), f"epoch: {KILL_EPOCH:3d}/"
        self.wait(child, until=lambda: os.path.exists(state) and marker in child.output())
        if child.poll() is None:
            child.stop()
        if not child.stopped:
            return {"status": "finished before the kill" if child.passed else child.status()}
        return {
            "status": "killed mid-run",
            "resume_state_epoch": torch.load(state, map_location="cpu", weights_only=True)["epoch"],
        }

    def throughput(self, modes):
        results = self.items("throughput", "modes")
        for name in [m for m in (modes or self.modes()) if m in self.modes() and m not in results]:
            if self.unavailable(name):
                results[name] = {"mode": name, "status": self.unavailable(name)}
                continue
            path = os.path.join(self.work, f"throughput_{name}.json")
            cmd = [
                sys.executable,
                os.path.abspath(__file__),
                "--child_throughput",
                name,
                "--result",
                path,
                "--device",
                self.args.device,
            ] + ["--tiny"] * self.args.tiny
            kind = self.kind_of("throughput", name)
            child, why = self.launch(f"throughput_{name}", cmd, kind, recompile=self.recompile("throughput", name))
            if child is None:
                results[name] = {"mode": name, "status": why}
                self.write()
                continue
            results[name] = {"mode": name, "status": "running"}
            self.write()
            self.wait(child)
            r = json.load(open(path)) if os.path.exists(path) else {"mode": name}
            r.update(device=self.kind, process_s=child.seconds())
            if not child.passed:  # never a result: what it measured before is kept, marked
                r["status"] = f"{child.status()}; not a result (the phases it measured before are kept)"
            elif r.get("status") == "measured":
                self.cached.add(name)
                r.update(project(r, self.args.warmup_epochs))
                gpu = self.report["steps"].get("machine", {}).get("facts", {}).get("gpu") or {}
                peak = peak_tflops(gpu.get("name"), r["precision"])
                if peak:
                    r.update(peak_tflops=peak, share_of_peak=r["train_tflops"] / peak)
            results[name] = r
            reference = results.get("reference", {})
            for other in results.values():
                if other.get("status") == "measured" and reference.get("status") == "measured":
                    other["vs_reference"] = reference["mean_epoch_s"] / other["mean_epoch_s"]
            self.report["steps"]["throughput"]["verdicts"] = verdicts(results)
            self.write()

    def real_data(self, items=None):
        files = real_data_files(self.args.real_data)
        if files is None:
            self.report["steps"]["real_data"] = {
                "status": f"skipped: {self.args.real_data} holds neither cifar10.npz and "
                "CIFAR-10_human.pt nor the shared data's folders (--real_data; "
                "--prepare_data makes the first)"
            }
            return
        images, labels = files
        results = os.path.join(self.work, "quick")
        env = dict(
            self.env,
            NOISE_TYPES="worst",
            SEED="0",
            BKD_DATA_ROOT=images,
            RESULTS_DIR=results,
            NOISE_PATH=labels,
            DEVICE=self.args.device,
            PYTHON=sys.executable,
        )
        cmd = (
            ["bash", os.path.join(ROOT, "run.sh"), "--quick", "--no_download"]
            + TINY_QUICK * self.args.tiny
            + ["--threads", self.env["OMP_NUM_THREADS"]] * ("OMP_NUM_THREADS" in self.env and self.kind == "cpu")
        )
        c, why = self.launch("real_data", cmd, "real_data", env)
        if c is None:
            self.report["steps"]["real_data"] = {"status": why}
            return
        self.wait(c)
        metrics_path = os.path.join(results, QUICK_RUN, "metrics.json")
        step = {"status": c.status(), "command": " ".join(cmd), "process_s": c.seconds()}
        if c.passed and os.path.exists(metrics_path):
            m = json.load(open(metrics_path))
            step.update(
                result={name: get(m) for name, get, _ in COLUMNS},
                epoch_seconds=m.get("epoch_seconds"),
                data=[images, labels],
                compare_with="docs/results.md (the quick preset on the CPU)",
            )
        else:
            step["output_tail"] = c.output()[-2000:]
        self.report["steps"]["real_data"] = step

    def cuda_tests(self, items=None):
        import importlib.util

        if importlib.util.find_spec("pytest") is None:
            self.report["steps"]["cuda_tests"] = {"status": "skipped: pytest is not installed"}
            return
        # -o addopts=: none of pytest.ini's pytest-xdist options (a version of it may be missing there)
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-rs",
            "-o",
            "addopts=",
            "-p",
            "no:cacheprovider",
            "-m",
            "cuda",
            "-k",
            "not default_configuration",
            os.path.join(ROOT, "tests", "test_cuda.py"),
        ]
        c, why = self.launch("cuda_tests", cmd, "cuda_tests")
        if c is None:
            self.report["steps"]["cuda_tests"] = {"status": why}
            return
        self.wait(c)
        lines = [line for line in c.output().splitlines() if line.strip()]
        self.report["steps"]["cuda_tests"] = {
            "status": c.status(),
            "summary": lines[-1] if lines else "",
            "output_tail": c.output()[-4000:],
        }

    def smoke(self, modes):
        """One short run of each mode not yet run through the training script (correctness ran the default and --amp
        configurations), `--jobs` side by side."""
        runs = self.items("smoke", "runs")
        through_script = {"default"} | (
            {"amp"}
            if self.report["steps"].get("correctness", {}).get("configs", {}).get("amp", {}).get("status") == "passed"
            else set()
        )
        pending = [
            m for m in (modes or self.modes()) if m in self.modes() and m not in runs and m not in through_script
        ]
        active = {}
        while pending or active:
            while pending and len(active) < self.args.jobs:
                mode = pending.pop(0)
                child, why = (
                    (None, self.unavailable(mode))
                    if self.unavailable(mode)
                    else self.launch(
                        f"smoke_{mode}",
                        self.script(mode, os.path.join(self.work, "smoke", mode)),
                        self.kind_of("run", mode),
                        recompile=self.recompile("run", mode),
                    )
                )
                if child is None:
                    runs[mode] = {"status": why}
                else:
                    active[mode] = child
            for mode, child in list(active.items()):
                if child.poll() is not None:
                    del active[mode]
                    out = child.output()
                    runs[mode] = {
                        "status": child.status(),
                        "seconds": child.seconds(),
                        "finished": "[bkd] finished" in out,
                        "ran_as": compile_outcome(out),
                    }
                    self.write()
            time.sleep(0.05)


def real_data_files(folder):
    """(images folder, label file) of the real-data step: a --prepare_data folder, or the shared data's layout."""
    for images, labels in (("", "CIFAR-10_human.pt"), ("cifar10-jpeg", os.path.join("cifar-n", "CIFAR-10_human.pt"))):
        images, labels = os.path.join(folder, images), os.path.join(folder, labels)
        if os.path.exists(os.path.join(images, "cifar10.npz")) and os.path.exists(labels):
            return os.path.abspath(images), os.path.abspath(labels)
    return None


def equal_runs(a, b):
    """The files of two runs that differ (none: bit-equal): final and best weights, detection.npy, agreement.npy."""
    import numpy as np
    import torch

    differ = []
    for name in ("teacher_last.pth.tar", "student_last.pth.tar", "teacher.pth.tar", "student.pth.tar"):
        wa, wb = (
            torch.load(os.path.join(d, name), map_location="cpu", weights_only=True)["state_dict"] for d in (a, b)
        )
        if wa.keys() != wb.keys() or not all(torch.equal(wa[k], wb[k]) for k in wa):
            differ.append(name)
    for name in ("detection.npy", "agreement.npy"):
        if not np.array_equal(np.load(os.path.join(a, name)), np.load(os.path.join(b, name))):
            differ.append(name)
    return differ


def verdicts(results):
    """Each target against what was measured, and whether what was measured ran as the mode asks (compiled)."""
    out = []
    for name, target in TARGETS.items():
        r = results.get(name, {})
        if "vs_reference" in r:
            ratio = r["vs_reference"]
            out.append(
                f"{name}: {ratio:.2f}x the reference mode per epoch (target {target:.0f}x): "
                f"{'met' if ratio >= target else 'not met'}"
            )
    for name, budget in (("amp", AMP_BUDGET_MIN), ("default", DEFAULT_BUDGET_MIN)):
        r = results.get(name, {})
        if r.get("status") == "measured":
            minutes = r["projected_300_epochs_min"]
            out.append(
                f"{name}: 300 epochs projected at {minutes:.1f} min (target under {budget} min on an H100-class "
                f"GPU): {'met' if minutes < budget else 'not met'}"
            )
    for name, r in results.items():
        if r.get("status") == "measured" and MODES[name].flags.get("compile") and not r.get("compiled", True):
            out.append(f"{name}: measured {ran(r)}, not compiled as the mode asks: its figures are eager's")
    return out


# --- the report -------------------------------------------------------------------------------------------------------
def fmt(value, digits=2, suffix=""):
    return "" if value is None else f"{value:.{digits}f}{suffix}"


HEADER = [
    "mode",
    "flags",
    "arithmetic",
    "s / warm-up epoch",
    "s / robust epoch",
    "300 epochs (min)",
    "vs reference",
    "TFLOP/s (training)",
    "of peak",
    "peak GPU GiB",
    "first iterations (s)",
    "status",
]


def ran(r):
    """What a measured mode's networks ran as, as its child recorded it: a compilation that fell back is said, never
    shown as compiled."""
    if r.get("compiled"):
        return "compiled"
    because = r.get("eager_because")
    return "eager" if because in (None, "not asked") else f"EAGER: {because}"


def throughput_rows(modes):
    rows = []
    for name, r in modes.items():
        row = {
            "mode": name,
            "flags": " ".join(cli_flags(name)) + (f" ({MODES[name].note})" if MODES[name].note else ""),
            "status": r.get("status", ""),
        }
        if r.get("status") == "measured":
            row.update(
                {
                    "arithmetic": ", ".join([r["precision"], ran(r)] + ["nondeterministic"] * (not r["deterministic"])),
                    "s / warm-up epoch": fmt(r["warmup_epoch_s"]),
                    "s / robust epoch": fmt(r["robust_epoch_s"]),
                    "300 epochs (min)": fmt(r["projected_300_epochs_min"], 1),
                    "vs reference": fmt(r.get("vs_reference"), 2, "x"),
                    "TFLOP/s (training)": fmt(r["train_tflops"], 1),
                    "of peak": fmt(100 * r["share_of_peak"], 0, " %") if "share_of_peak" in r else "",
                    "peak GPU GiB": fmt(r.get("peak_gpu_memory_gib")),
                    "first iterations (s)": fmt(r["first_iterations_s"], 1),
                }
            )
        rows.append(row)
    return rows


def summary_lines(report):
    steps = report["steps"]
    facts = steps.get("machine", {}).get("facts")
    lines = [
        f"# GPU check: {machine_line(facts) if facts else report['device']}",
        "",
        f"`{report['command']}`, {report['wall_s']:.0f} s of a {report['budget_s']:.0f} s budget",
        "",
    ]
    for name in STEPS:
        step = steps.get(name)
        lines.append(f"* **{name}**: {step.get('status', 'running') if step else 'not reached'}")
    smoke = steps.get("smoke", {}).get("runs")
    if smoke:
        lines += ["", "## Smoke runs", ""] + markdown(
            [dict(r, mode=m) for m, r in smoke.items()], ["mode", "status", "seconds", "finished", "ran_as"]
        )
    correctness = steps.get("correctness", {}).get("configs")
    if correctness:
        lines += ["", "## Correctness (bit-equal)", ""] + markdown(
            [
                {
                    "configuration": c,
                    "flags": r.get("flags", ""),
                    "ran as": r.get("ran_as", ""),
                    "status": r["status"],
                    "identical runs differ in": ", ".join(r.get("identical_runs_differ_in", [])) or "-",
                    "killed and resumed differs in": ", ".join(r.get("resumed_run_differs_in", [])) or "-",
                }
                for c, r in correctness.items()
            ],
            ["configuration", "flags", "ran as", "status", "identical runs differ in", "killed and resumed differs in"],
        )
    modes = steps.get("throughput", {}).get("modes")
    if modes:
        lines += ["", "## Throughput", ""] + markdown(throughput_rows(modes), HEADER) + [""]
        lines += [f"* {v}" for v in verdicts(modes)]
        sweep = next(
            (r["test_pass_s_by_eval_batch"] for r in modes.values() if r.get("test_pass_s_by_eval_batch")), None
        )
        if sweep:
            lines.append(
                "* test pass (default mode eager) by evaluation batch: "
                + ", ".join(f"{b}: {s:.2f} s" for b, s in sweep.items())
            )
    real = steps.get("real_data", {}).get("result")
    if real:
        lines += ["", "## Real data: the quick preset on CIFAR-10N worst (compare docs/results.md)", ""] + markdown(
            [{k: fmt(v, 3) if isinstance(v, float) else v for k, v in real.items()}], list(real)
        )
    tests = steps.get("cuda_tests", {}).get("summary")
    if tests:
        lines += ["", f"cuda tests: {tests}"]
    return lines


def machine_line(m):
    gpu = m.get("gpu")
    where = (
        f"{gpu['name']} (compute capability {gpu['compute_capability']}, {gpu['memory_gib']} GiB, "
        f"driver {gpu['driver']}, "
        f"CUDA {gpu['cuda']}, cuDNN {gpu['cudnn']})"
        if gpu
        else f"{m['cpu_model']} ({m['cpu_capability']})"
    )
    return f"{where}, torch {m['versions']['torch']}, {m['cpu_count']} CPUs"


# --- the real-data step's files ---------------------------------------------------------------------------------------
def prepare_data(shared, out, subset=4000, seed=0):
    """cifar10.npz with only the quick preset's subset of training images (the others zero: the subset is drawn from
    the labels alone) and the whole test set, compressed, plus the CIFAR-N label file: small enough to travel."""
    import numpy as np

    from bkd.data.split import stratified_subset

    os.makedirs(out, exist_ok=True)
    with np.load(os.path.join(shared, "cifar10-jpeg", "cifar10.npz")) as f:
        y_train = f["y_train"]
        chosen = stratified_subset(y_train, subset, seed)
        x_train = np.zeros_like(f["x_train"])
        x_train[chosen] = f["x_train"][chosen]
        with atomic_path(os.path.join(out, "cifar10.npz")) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, x_train=x_train, y_train=y_train, x_test=f["x_test"], y_test=f["y_test"])
    shutil.copyfile(os.path.join(shared, "cifar-n", "CIFAR-10_human.pt"), os.path.join(out, "CIFAR-10_human.pt"))
    return sum(os.path.getsize(os.path.join(out, name)) for name in os.listdir(out))


def main(argv=None):
    started = time.time()  # the budget counts from here: the check's own start-up is part of the call
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu (with --tiny)")
    p.add_argument("--tiny", action="store_true", help="tiny sizes: shows every step works (on the CPU, in minutes)")
    p.add_argument(
        "--out",
        default=os.path.join(ROOT, "benchmarks", "results", "gpu_check"),
        help="writes <out>.json, <out>.md and <out>.log",
    )
    p.add_argument(
        "--steps",
        nargs="+",
        default=list(STEPS),
        choices=STEPS,
        help="the steps to run (default: all, as PLAN orders them)",
    )
    p.add_argument(
        "--modes", nargs="+", default=None, choices=list(MODES), help="modes of the throughput and smoke steps"
    )
    p.add_argument(
        "--configs",
        nargs="+",
        default=list(CORRECTNESS),
        choices=list(CORRECTNESS),
        help="configurations of the correctness step",
    )
    p.add_argument(
        "--budget_s",
        type=float,
        default=480,
        help="the whole check's time, start-up included: a child starts "
        "only if what it is expected to take fits in what is left, else it is skipped, saying so",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="runs side by side (default: 2 on CUDA, where the GPU waits for the CPU's compilations; 1 on a CPU)",
    )
    p.add_argument(
        "--warmup_epochs",
        type=int,
        default=15,
        help="warm-up epochs assumed in the 300-epoch projection (the overfitting epoch is found after them)",
    )
    p.add_argument(
        "--real_data",
        default=None,
        help="the real-data step's folder: cifar10.npz and CIFAR-10_human.pt "
        "(--prepare_data), or the shared data's folder (default: .gpu_data if present, else the shared data)",
    )
    p.add_argument("--work_dir", default=None, help="where the runs go (default: a new temporary folder)")
    p.add_argument(
        "--compile_cache",
        default=None,
        help="the inductor and triton caches every child shares; they outlive the call, so that a second call on the "
        f"same machine loads what the first compiled (default: $TORCHINDUCTOR_CACHE_DIR, else {COMPILE_CACHE})",
    )
    p.add_argument(
        "--prepare_data", metavar="DIR", help="write the real-data step's files from the shared data into DIR"
    )
    p.add_argument("--simulate_compile_s", type=float, default=0, help=argparse.SUPPRESS)  # tests: slow compilations
    p.add_argument("--child_script", help=argparse.SUPPRESS)
    p.add_argument("--eager_backend", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--child_throughput", help=argparse.SUPPRESS)
    p.add_argument("--child_cache_probe", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    args.argv, args.started = argv, started
    if args.child_script:
        return child_script(args.child_script, args.eager_backend, args.rest)
    size = TINY if args.tiny else FULL
    if args.child_throughput:
        return measure_mode(args.child_throughput, args.device, size, args.result)
    if args.child_cache_probe:
        return probe_compile_cache(args.device, args.result)
    if args.prepare_data:
        from benchmarks import SHARED

        mib = prepare_data(SHARED, args.prepare_data) / 2**20
        print(f"wrote {args.prepare_data}/cifar10.npz and CIFAR-10_human.pt ({mib:.1f} MiB); carry it to the GPU call")
        return 0
    from bkd.utils.devices import resolve_device
    from bkd.utils.errors import BKDError

    try:
        device = resolve_device(args.device)
    except BKDError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    args.jobs = args.jobs or (2 if device.type == "cuda" else 1)
    if args.real_data is None:
        from benchmarks import SHARED

        args.real_data = PREPARED if os.path.isdir(PREPARED) else SHARED
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    check = Check(args, device)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop_children)
    step = None
    try:
        for step, items in PLAN:
            if step not in args.steps:
                continue
            print(f"== {step}" + (f" ({', '.join(items)})" if items else ""), flush=True)
            check.report["steps"].setdefault(step, {})["status"] = "running"
            check.write()
            started_step, failure = time.time(), None
            try:
                getattr(check, step)(items)
            except Stopped:
                raise
            except Exception as err:  # a step's own failure: what it finished stays, the next steps still run
                import traceback

                failure = {
                    "status": f"failed: {type(err).__name__}: {err}",
                    "traceback": traceback.format_exc()[-3000:],
                }
            record = check.report["steps"][step]
            items_of = record.get("configs") or record.get("modes") or record.get("runs")
            if failure:
                record.update(failure)
            elif items_of is not None:
                record["status"] = summarize(items_of)
            record["seconds"] = round(record.get("seconds", 0) + time.time() - started_step, 1)
            check.write()
            print(f"   {record['status']}", flush=True)
    except Stopped as stop:
        name = signal.Signals(stop.args[0]).name
        for record in check.report["steps"].values():
            for item in (record.get("configs") or record.get("modes") or record.get("runs") or {}).values():
                if item.get("status") == "running":
                    item["status"] = f"interrupted ({name})"
            if record.get("status") == "running":
                record["status"] = f"interrupted ({name}): what is above was finished"
        check.write()
        return 128 + stop.args[0]
    finally:
        for child in list(Child.RUNNING):  # none outlives the check, whatever ended it
            child._kill()
        shutil.rmtree(check.work, ignore_errors=True)
    print("\n".join(summary_lines(check.report)))
    print(f"written to {args.out}.json, .md and .log")
    failed = [name for name, record in check.report["steps"].items() if str(record.get("status")).startswith("failed")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
