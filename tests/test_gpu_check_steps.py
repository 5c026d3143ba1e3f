"""benchmarks/gpu_check.py's later steps rehearsed on the CPU (its first steps: tests/test_gpu_check.py; two modules, so
that the two test workers run them side by side)."""

import json
import subprocess

import pytest

from benchmarks import SHARED, gpu_check
from tests.cli import ROOT
from tests.test_gpu_check import CHECK


@pytest.mark.slow
def test_rehearsal_of_throughput_real_data_and_the_cuda_tests(tmp_path):
    out, work = str(tmp_path / "gc"), tmp_path / "work"
    work.mkdir()
    common = ["--out", out, "--work_dir", str(work)]
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
        "| reference | --reference --num_workers 4 | fp32" in text and "| default-eager | --no_compile | fp32 |" in text
    )
    assert proc.stdout.rstrip().splitlines()[-1].startswith("written to")
