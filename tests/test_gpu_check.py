"""benchmarks/gpu_check.py works before any GPU time is spent: its first steps rehearsed on the CPU, a stopped check
keeps what it finished, and the pieces that decide its figures (steady-state timing, CUDA graphs' outputs,
projection)."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from benchmarks import SHARED, gpu_check
from tests.cli import ROOT

CHECK = [sys.executable, os.path.join(ROOT, "benchmarks", "gpu_check.py"), "--device", "cpu", "--tiny"]


def _processes_with(text):
    """Processes whose command line holds `text` (the check's children name its work folder)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if text.encode() in fh.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


@pytest.mark.slow
def test_a_stopped_rehearsal_keeps_its_finished_steps_and_stops_its_children(tmp_path):
    """The first answers on the CPU (tests/test_gpu_check_steps.py runs the later steps), stopped in the throughput
    step."""
    out, work = str(tmp_path / "gc"), tmp_path / "work"
    work.mkdir()
    common = ["--out", out, "--work_dir", str(work), "--compile_cache", str(tmp_path / "compile_cache")]
    common += ["--steps", *[s for s in gpu_check.STEPS if s != "compile_cache"]]  # (its own test: a real compile)
    # stopped (SIGTERM, as `timeout` does) once correctness has passed, in the throughput step
    proc = subprocess.Popen(
        CHECK + common + ["--modes", "reference", "--configs", "default"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(out + ".json"):
            steps = json.load(open(out + ".json"))["steps"]
            if steps.get("throughput", {}).get("status") == "running":
                break
        time.sleep(0.2)
    time.sleep(2)  # a throughput child is running now
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 128 + signal.SIGTERM, output
    report = json.load(open(out + ".json"))
    steps = report["steps"]
    assert steps["machine"]["status"] == "done" and steps["machine"]["facts"]["cpu_kind"]["capability"]
    default = steps["correctness"]["configs"]["default"]
    assert steps["correctness"]["status"] == "passed" and default["killed"]["status"] == "killed mid-run", default
    assert default["identical_runs_differ_in"] == [] and default["resumed_run_differs_in"] == []
    assert steps["throughput"]["status"].startswith("interrupted (SIGTERM)")
    assert steps["throughput"]["modes"]["reference"]["status"] == "interrupted (SIGTERM)"
    assert "real_data" not in steps and "## Correctness (bit-equal)" in open(out + ".md").read()
    log = open(out + ".log").read()  # each child's output, as it ended
    assert (
        "==== correctness_default_killed (stopped on purpose" in log
        and "==== correctness_default_resumed (passed" in log
    )
    assert not _processes_with(str(work)), "the stopped check left children running"


@pytest.mark.slow
def test_slow_compiles_give_the_first_answers_and_skip_the_rest_saying_why(tmp_path):
    """Each compiled mode's first child takes 20 s more here (--simulate_compile_s: a slow compilation, then its cache):
    the default configuration's correctness and the reference and default modes' speed come back, and what no longer
    fits is skipped with its reason, never started to be killed at the budget's end. (The compile-cache step, a real
    compilation, has a test of its own.)"""
    out, work, budget = str(tmp_path / "gc"), tmp_path / "work", 120
    steps = [s for s in gpu_check.STEPS if s != "compile_cache"]
    work.mkdir()
    started = time.time()
    proc = subprocess.run(
        CHECK
        + ["--out", out, "--work_dir", str(work), "--compile_cache", str(tmp_path / "compile_cache")]
        + ["--simulate_compile_s", "20", "--budget_s", str(budget), "--steps", *steps],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=budget + 120,
    )
    assert time.time() - started < budget + 30, "the check overran its budget"
    steps = json.load(open(out + ".json"))["steps"]
    assert steps["correctness"]["configs"]["default"]["status"] == "passed", steps["correctness"]
    modes = steps["throughput"]["modes"]
    assert modes["reference"]["status"] == "measured" and modes["default"]["status"] == "measured", modes
    records = [
        r
        for step in steps.values()
        for r in [step] + list((step.get("configs") or step.get("modes") or step.get("runs") or {}).values())
    ]
    statuses = [str(r.get("status")) for r in records]
    assert not [s for s in statuses if s.startswith(("timed out", "failed"))], statuses
    assert [s for s in statuses if re.match(r"skipped: \d+ s left, needs ~\d+ s$", s)], statuses
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def _check(tmp_path, **args):
    """A Check on the CPU, in this process, as main() makes it."""
    import argparse

    defaults = dict(
        out=str(tmp_path / "gc"),
        work_dir=str(tmp_path),
        budget_s=300,
        jobs=1,
        simulate_compile_s=0,
        tiny=True,
        configs=list(gpu_check.CORRECTNESS),
        argv=[],
        started=time.time(),
        modes=None,
        real_data=str(tmp_path),
        device="cpu",
        warmup_epochs=15,
        compile_cache=str(tmp_path / "compile_cache"),
    )
    return gpu_check.Check(argparse.Namespace(**dict(defaults, **args)), torch.device("cpu"))


@pytest.mark.slow
def test_a_run_that_times_out_is_reported_so_and_erases_no_other_configurations_result(tmp_path, monkeypatch):
    check = _check(tmp_path)
    monkeypatch.setattr(check.estimates, "predict", lambda kind: 1.0)
    monkeypatch.setattr(gpu_check.Check, "LIMIT_MARGIN_S", 0)  # a limit of 2.5 s
    configs = check.items("correctness", "configs")
    configs["amp"] = {"status": "passed"}  # finished earlier in the call
    # the runs a and b pass at once; the run to kill never reaches its epoch: it times out, which is not the kill
    monkeypatch.setattr(
        check,
        "script",
        lambda mode, run_dir, *flags: [
            sys.executable,
            "-c",
            "import time; time.sleep(60)" if run_dir.endswith("killed") else "pass",
        ],
    )
    check.correctness(["default"])
    assert configs["default"]["status"] == "failed: the run to kill timed out after 2 s (killed with its process group)"
    assert configs["amp"] == {"status": "passed"}
    monkeypatch.setattr(
        check, "script", lambda mode, run_dir, *flags: [sys.executable, "-c", "import time; time.sleep(60)"]
    )
    check.correctness(["default"])
    assert configs["default"]["status"].startswith("failed: run a timed out after 2 s") and configs["amp"] == {
        "status": "passed"
    }
    assert gpu_check.summarize(configs) == "failed: default"
    assert not gpu_check.Child.RUNNING


def test_a_child_that_would_not_fit_in_the_budget_is_not_started(tmp_path):
    check = _check(tmp_path, budget_s=30)
    child, why = check.launch("throughput_reference", [sys.executable, "-c", "pass"], "throughput")
    assert child is None and re.match(r"^skipped: \d+ s left, needs ~25 s$", why), why  # the prior, on a CPU
    check.estimates.record("throughput", 5.0)  # measured in this call: this machine is 5x faster than the prior
    child, why = check.launch("throughput_default", [sys.executable, "-c", "pass"], "throughput")
    assert why is None and child.timeout == pytest.approx(min(5.0 + 60, check.left() - gpu_check.RESERVE_S), abs=1)
    check.wait(child)
    assert child.passed and check.estimates.predict("real_data") == pytest.approx(75 * 5 / 25)  # scaled by what it saw
    assert "==== throughput_default (passed" in open(check.args.out + ".log").read()


def test_a_warm_child_may_compile_again_until_the_cache_is_shown_to_be_reused(tmp_path):
    """A child of a mode whose graphs an earlier child compiled is expected to load them; until a second process was
    seen loading from the cache on this machine (compile_cache), its limit allows it to compile again."""
    check = _check(tmp_path, budget_s=600)
    check.estimates.record("throughput", 5.0)
    check.estimates.record("throughput_cold", 50.0)
    command = [sys.executable, "-c", "pass"]
    unproven, _ = check.launch("throughput_default", command, "throughput", recompile="throughput_cold")
    check.cache_proven = True
    proven, _ = check.launch("throughput_default", command, "throughput", recompile="throughput_cold")
    assert unproven.timeout == pytest.approx(2.5 * 50) and proven.timeout == pytest.approx(5 + 60)
    check.wait(unproven, proven)


@pytest.mark.slow
def test_the_compile_cache_outlives_a_killed_call_and_a_second_call_loads_from_it(tmp_path):
    """A real inductor compilation (a small network, on the CPU too): a second process loads it from the shared cache,
    which is outside the call's work folder, so a call killed meanwhile leaves it for the next call on the machine."""
    cache, out = tmp_path / "compile_cache", str(tmp_path / "gc")
    common = ["--out", out, "--compile_cache", str(cache), "--steps", "machine", "compile_cache"]
    proc = subprocess.Popen(CHECK + common, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while "==== compile_cache_first (passed" not in (open(out + ".log").read() if os.path.exists(out + ".log") else ""):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)  # the first call ends (its time limit's `timeout`) after its first compilation
    proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM and any(cache.rglob("*")), "the killed call took its cache along"
    first = json.load(open(out + ".json"))["steps"]["compile_cache"]["children"]["first"]
    assert first["misses"] > 0 and first["hits"] == 0  # it compiled
    subprocess.run(CHECK + common, cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
    step = json.load(open(out + ".json"))["steps"]["compile_cache"]
    assert step["proven"] and step["status"] == "passed: the second process loaded what the first compiled", step
    assert step["children"]["first"]["hits"] > 0 and step["children"]["first"]["misses"] == 0  # the killed call's


def test_every_mode_is_flags_the_training_script_takes():
    from flags import parse, training_config, training_parser

    for name, mode in gpu_check.MODES.items():
        config = training_config(parse(training_parser(), gpu_check.cli_flags(name)))
        assert all(getattr(config, key) == value for key, value in mode.flags.items()), name


def test_iterations_are_timed_in_steady_state_from_one_iterator():
    """The PIL loader starts its workers when an iterator is made: warm-up and timed iterations share one."""

    class Loader:
        num_samples, batch_size, iterators = 100, 10, 0

        def __iter__(self):
            Loader.iterators += 1
            return iter(range(10))

    loader = Loader()
    it = iter(loader)
    assert list(gpu_check.Steps(loader, it, 2)) == [0, 1] and list(gpu_check.Steps(loader, it, 3)) == [2, 3, 4]
    assert Loader.iterators == 1 and len(gpu_check.Steps(loader, it, 3)) == 3


def test_cuda_graph_outputs_are_copied_out_before_the_next_call():
    """A CUDA graph hands out one static output buffer, overwritten at its next replay: Nets calls the teacher and then
    the student before reading either. Simulated on the CPU by a function that reuses its output buffer."""
    from bkd.engine import Nets, Precision

    def graph_like():
        static = torch.zeros(2, 3)

        def replay(x):
            static.copy_(x[:, :3] * 2)
            return static

        return replay

    x, y = torch.ones(2, 4), torch.full((2, 4), 5.0)
    cpu = Precision(torch.device("cpu"))
    net = graph_like()
    teacher = lambda inp: net(inp)  # noqa: E731
    student = lambda inp: net(inp + 4)  # noqa: E731
    zt, zs = Nets(None, None, cpu, forward=(teacher, student))(x)
    assert torch.equal(zt, zs)  # without copying out, the teacher's logits are the student's
    net = gpu_check.copied_out(graph_like())
    zt, zs = Nets(None, None, cpu, forward=(lambda inp: net(inp), lambda inp: net(inp + 4)))(x)
    assert torch.equal(zt, torch.full((2, 3), 2.0)) and torch.equal(zs, y[:, :3] * 2)


def test_achieved_tflops_are_measured_against_the_precisions_peak():
    # both networks, forward + backward
    assert gpu_check.training_flops(64, 128, 10) == pytest.approx(852.2e9, rel=1e-3)
    assert gpu_check.peak_tflops("NVIDIA H200", "tf32") == 495 and gpu_check.peak_tflops("NVIDIA H200", "fp32") == 67
    assert gpu_check.peak_tflops("NVIDIA RTX 9999", "bf16") is None


def test_projection_counts_the_full_set_passes_and_evaluations_of_each_mode():
    figures = dict(
        first_batch_s=0.5,
        iterations_per_epoch=100,
        warmup_iteration_s=0.01,
        robust_iteration_s=0.02,
        full_set_pass_s=3.0,
        val_pass_s=1.0,
        test_pass_s=2.0,
        state_host_copy_s=0.1,
        state_write_s=0.4,
        device="cuda",
    )
    ref = gpu_check.project(dict(figures, loader="torchvision"), warmup_epochs=15)
    new = gpu_check.project(dict(figures, loader="device"), warmup_epochs=15)
    # training passes: 15 x (0.5 + 1.0 + 0.1) + 285 x (0.5 + 2.0 + 0.1); 31 evaluations of 3 s; on CUDA the write is
    # off the training thread; the reference mode runs 14 full-set passes, the default one
    base = 15 * 1.6 + 285 * 2.6 + 31 * 3.0
    assert new["projected_300_epochs_min"] == pytest.approx((base + 3.0) / 60)
    assert ref["projected_300_epochs_min"] == pytest.approx((base + 14 * 3.0) / 60)
    assert ref["warmup_epoch_s"] == pytest.approx(1.6 + 3.0) and new["robust_epoch_s"] == pytest.approx(2.6)
    cpu = gpu_check.project(dict(figures, loader="device", device="cpu"), warmup_epochs=15)
    assert cpu["robust_epoch_s"] == pytest.approx(3.0)  # on the CPU the write is in the training thread


@pytest.mark.slow
@pytest.mark.skipif(not gpu_check.real_data_files(SHARED), reason=f"needs the shared CIFAR-10 data ({SHARED})")
def test_the_real_data_files_hold_the_quick_subset_and_the_whole_test_set(tmp_path):
    from bkd.data.split import stratified_subset

    gpu_check.prepare_data(SHARED, str(tmp_path), subset=200)
    made = np.load(tmp_path / "cifar10.npz")
    with np.load(os.path.join(SHARED, "cifar10-jpeg", "cifar10.npz")) as full:
        chosen = stratified_subset(full["y_train"], 200, 0)
        assert np.array_equal(made["x_train"][chosen], full["x_train"][chosen])
        assert np.array_equal(made["y_train"], full["y_train"]) and np.array_equal(made["x_test"], full["x_test"])
    assert made["x_train"].sum(axis=(1, 2, 3)).nonzero()[0].tolist() == sorted(chosen.tolist())
    assert gpu_check.real_data_files(str(tmp_path)) == (str(tmp_path), str(tmp_path / "CIFAR-10_human.pt"))


def test_a_child_past_its_limit_is_killed_with_everything_it_started(tmp_path):
    """A timed-out step (pytest, run.sh) must not leave its training running on the GPU: its whole process group
    goes."""
    seconds = str(300 + os.getpid() % 1000)  # an argument no other process has
    child = gpu_check.Child(
        "slow", ["bash", "-c", f"sleep {seconds} & sleep {seconds}; true"], str(tmp_path), timeout=2
    )
    deadline = time.time() + 10
    sleepers = []
    while len(sleepers) < 2 and time.time() < deadline:
        sleepers = _processes_with(f"sleep\0{seconds}\0")
        time.sleep(0.05)
    assert len(sleepers) == 2
    # (started with start_new_session, not a preexec_fn, which is unsafe once CUDA's threads run: a session and a
    # process group of its own)
    assert os.getsid(child.proc.pid) == os.getpgid(child.proc.pid) == child.proc.pid
    child.wait()
    assert child.timed_out and child.status().startswith("timed out after 2 s")
    time.sleep(0.2)
    assert _processes_with(f"sleep\0{seconds}\0") == [], "a grandchild outlived the limit"
