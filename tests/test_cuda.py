"""What the project promises on a CUDA GPU, checked on one (all `cuda`-marked: skipped without a GPU, saying so).

Tiny runs (a narrow network, a few epochs) on the GPU: fp32, --amp and compiled runs complete and say what they
computed with; two identical runs are bit-equal; a run killed with SIGKILL mid-epoch resumes to exactly the
uninterrupted run's weights; a GPU run's checkpoints load in a CPU-only process; the reference mode runs;
learning.py and detection.py evaluate the GPU run. The last test is the same promise at the configuration a user
runs (width 64, compiled): benchmarks/gpu_check.py's correctness step, which the check runs before the others.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from benchmarks.gpu_check import equal_runs
from tests.cli import ROOT, run, script, tiny_flags

pytestmark = pytest.mark.cuda
TRAIN = "blind_knowledge_dist_training.py"
GPU = dict(device="cuda", n_epoch=6, lr_step=4, noisy_val_freq=1, clean_test_freq=2, print_freq=1)


def _equal_runs(a, b):
    assert equal_runs(a, b) == []  # final and best weights of both networks, detection.npy, agreement.npy


@pytest.fixture(scope="module")
def gpu_run(synthetic_root, tmp_path_factory):
    results = str(tmp_path_factory.mktemp("gpu"))
    flags = tiny_flags(synthetic_root, results, **GPU)
    out = run(TRAIN, *flags, cwd=results).stdout
    return flags, os.path.join(results, "cifar10_worst_seed_0"), out


def test_fp32_run_is_deterministic_in_tf32_and_records_the_gpu(gpu_run):
    _, run_dir, out = gpu_run
    assert "device cuda (fp32, TF32, deterministic kernels)" in out
    metrics = json.load(open(os.path.join(run_dir, "metrics.json")))
    gpu = metrics["machine"]["gpu"]
    assert gpu["name"] and gpu["compute_capability"] and gpu["cuda"] and gpu["cudnn"]
    assert gpu["determinism"]["deterministic_algorithms"] and not gpu["determinism"]["cudnn_benchmark"]
    assert metrics["config"]["precision"] == "fp32" and metrics["config"]["deterministic"] and metrics["config"]["tf32"]


def test_two_identical_runs_are_bit_equal(gpu_run, synthetic_root, tmp_path):
    flags, run_dir, _ = gpu_run
    run(TRAIN, *tiny_flags(synthetic_root, str(tmp_path), **GPU), cwd=str(tmp_path))
    _equal_runs(run_dir, os.path.join(tmp_path, "cifar10_worst_seed_0"))


def test_sigkill_mid_epoch_then_resume_equals_the_uninterrupted_run(gpu_run, synthetic_root, tmp_path):
    _, run_dir, _ = gpu_run
    flags = tiny_flags(synthetic_root, str(tmp_path), **GPU)
    proc = subprocess.Popen(
        [sys.executable, script(TRAIN), *flags],
        cwd=str(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    state = os.path.join(tmp_path, "cifar10_worst_seed_0", "state.pth.tar")
    for line in proc.stdout:  # into epoch 3, with an earlier epoch's state on disk (it is written in the background)
        if line.startswith("epoch:   3/") and os.path.exists(state):
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = torch.load(state, weights_only=True)["epoch"]
    assert done in (2, 3)  # the last completed epoch, or the one before while its files were being written
    out = run(TRAIN, *flags, "--resume", cwd=str(tmp_path)).stdout
    assert f"after epoch {done - 1}" in out
    _equal_runs(run_dir, os.path.join(tmp_path, "cifar10_worst_seed_0"))


def test_a_gpu_checkpoint_loads_in_a_cpu_only_process(gpu_run):
    flags, run_dir, _ = gpu_run
    code = (
        "import sys, torch; c = torch.load(sys.argv[1]); s = torch.load(sys.argv[2], weights_only=True); "
        "print(len(c['state_dict']), s['epoch'], {v.device.type for v in c['state_dict'].values()})"
    )
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    out = subprocess.run(
        [sys.executable, "-c", code, os.path.join(run_dir, "teacher.pth.tar"), os.path.join(run_dir, "state.pth.tar")],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert out.stdout.split() == ["107", "6", "{'cpu'}"]


def _accuracy(text):
    return float(text.split("Best test acc selected by val is ")[1].split()[0])


def test_learning_and_detection_on_the_gpu_run_and_on_a_cpu_only_process(gpu_run, synthetic_root):
    _, run_dir, _ = gpu_run
    common = [
        "--run_dir",
        run_dir,
        "--noise_type",
        "worst",
        "--no_download",
        "--data_root",
        synthetic_root,
        "--noise_path",
        os.path.join(synthetic_root, "CIFAR-10_human.pt"),
    ]
    gpu = run("learning.py", *common, "--device", "cuda").stdout
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    cpu = subprocess.run(
        [sys.executable, script("learning.py"), *common, "--device", "cpu"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert cpu.returncode == 0, cpu.stderr
    assert abs(_accuracy(gpu) - _accuracy(cpu.stdout)) <= 1.0  # the same weights; other kernels may flip a near-tie
    assert "The f-score is" in run("detection.py", *common).stdout


@pytest.mark.parametrize(
    "extra, says",
    [
        ({"amp": True}, "mixed precision"),
        ({"compile": True}, "torch.compile"),
        ({"reference": True, "num_workers": 2}, "reference mode"),
        ({"cudnn_benchmark": True, "strict_fp32": True}, "no TF32, cudnn.benchmark (nondeterministic)"),
    ],
)
def test_other_modes_run_on_the_gpu(synthetic_root, tmp_path, extra, says):
    start = time.time()
    out = run(
        TRAIN,
        *tiny_flags(synthetic_root, str(tmp_path), **dict(GPU, n_epoch=3, **extra)),
        cwd=str(tmp_path),
        timeout=600,
    ).stdout
    assert says in out and "[bkd] finished" in out, out[-2000:]
    assert "torch.compile failed" not in out
    metrics = json.load(open(os.path.join(tmp_path, "cifar10_worst_seed_0", "metrics.json")))
    if extra.get("amp"):
        assert metrics["config"]["precision"] == ("bf16" if torch.cuda.get_device_capability() >= (8, 0) else "fp16")
    print(f"{extra}: {time.time() - start:.0f} s")


@pytest.mark.parametrize("config", ["default", "amp"])
def test_default_configuration_is_reproducible_and_resumes_exactly(config, tmp_path):
    """The configuration a user runs (width 64, compiled, TF32; and --amp): the GPU check's correctness step, two
    identical runs bit-equal and a run killed with SIGKILL mid-epoch resumed to the uninterrupted run's files."""
    out = tmp_path / "gc"
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "benchmarks", "gpu_check.py"),
            "--steps",
            "correctness",
            "--configs",
            config,
            "--out",
            str(out),
            "--work_dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    step = json.load(open(f"{out}.json"))["steps"]["correctness"]
    assert step["status"] == "passed", (step, proc.stdout[-2000:], proc.stderr[-2000:])
