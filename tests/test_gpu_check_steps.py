"""benchmarks/gpu_check.py's later steps rehearsed on the CPU (its first steps: tests/test_gpu_check.py; two modules, so
that the two test workers run them side by side)."""

import json
import os
import subprocess

import pytest

from benchmarks import SHARED, gpu_check
from tests.cli import ROOT
from tests.test_gpu_check import CHECK


@pytest.mark.slow
def test_rehearsal_of_throughput_real_data_and_the_cuda_tests(tmp_path):
    out, work = str(tmp_path / "gc"), tmp_path / "work"
    work.mkdir()
    common = ["--out", out, "--work_dir", str(work), "--compile_cache", str(tmp_path / "compile_cache")]
    proc = subprocess.run(
        CHECK + common + ["--modes", "reference", "default-eager", "--steps", "throughput", "real_data", "cuda_tests"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = json.load(open(out + ".json"))["steps"]
    modes = steps["throughput"]["modes"]
    assert set(modes) == {"reference", "default-eager"} and all(r["status"] == "measured" for r in modes.values()), (
        modes
    )
    for r in modes.values():
        assert r["warmup_epoch_s"] > 0 and r["robust_epoch_s"] > 0 and r["train_tflops"] > 0
        assert r["iterations_per_epoch"] == 576 // 32 and r["state_mib"] > 0 and r["vs_reference"] > 0
    assert modes["reference"]["vs_reference"] == 1.0 and not modes["default-eager"]["compile"]
    if gpu_check.real_data_files(SHARED):
        real = steps["real_data"]
        assert real["status"] == "passed" and 0 < real["result"]["F1"] <= 1 and real["result"]["test acc, last (%)"] > 0
    else:
        assert steps["real_data"]["status"].startswith("skipped")
    assert steps["cuda_tests"]["status"] == "passed" and "skipped" in steps["cuda_tests"]["summary"]  # no GPU: said why
    text = open(out + ".md").read()
    assert (
        "| reference | --reference --num_workers 4 | fp32, eager" in text
        and "| default-eager | --no_compile | fp32, eager |" in text
    )
    assert proc.stdout.rstrip().splitlines()[-1].startswith("written to")


def test_a_speed_row_says_what_ran_not_what_was_asked():
    """A compiled mode whose compilation failed ran eager: its row and its verdict say so, as its child recorded it."""
    measured = dict(
        status="measured",
        precision="tf32",
        deterministic=True,
        compile=True,
        warmup_epoch_s=2.0,
        robust_epoch_s=2.0,
        projected_300_epochs_min=10.0,
        train_tflops=1.0,
        first_iterations_s=1.0,
        mean_epoch_s=2.0,
    )
    modes = {
        "default": dict(measured, compiled=False, eager_because="torch.compile failed (no C++ compiler)"),
        "amp": dict(measured, compiled=True, eager_because=None, precision="bf16"),
        "default-eager": dict(measured, compile=False, compiled=False, eager_because="not asked"),
    }
    rows = {row["mode"]: row["arithmetic"] for row in gpu_check.throughput_rows(modes)}
    assert rows == {
        "default": "tf32, EAGER: torch.compile failed (no C++ compiler)",
        "amp": "bf16, compiled",
        "default-eager": "tf32, eager",
    }
    assert gpu_check.verdicts(modes)[-1] == (
        "default: measured EAGER: torch.compile failed (no C++ compiler), not compiled as the mode asks: its figures "
        "are eager's"
    )
    failed = "[bkd] torch.compile failed (no C++ compiler); the networks run eager (--no_compile skips the attempt)"
    assert gpu_check.compile_outcome(f"epoch 0\n{failed}\n") == "eager: torch.compile failed (no C++ compiler)"
    assert gpu_check.compile_outcome("[bkd] torch.compile: compiling the networks for training at batch 128") == (
        "compiled"
    )
    assert gpu_check.compile_outcome("epoch 0\n") == "eager"


@pytest.mark.slow
def test_a_compilation_that_falls_back_is_measured_and_recorded_as_eager(tmp_path):
    """The throughput child measures what its run computes: a compilation that failed (simulated, as torch's own
    error) falls back to eager, and the child's result says so, read from the run, not from its flags."""
    path = str(tmp_path / "default.json")
    subprocess.run(
        CHECK[:2] + ["--child_throughput", "default", "--tiny", "--device", "cpu", "--result", path],
        cwd=ROOT,
        env=dict(os.environ, **{gpu_check.FAILED_COMPILE_ENV: "1"}),
        check=True,
        timeout=300,
    )
    r = json.load(open(path))
    assert r["status"] == "measured" and r["compile"] and not r["compiled"], r
    assert r["eager_because"] == "torch.compile failed (the simulated compilation failed)", r
