"""benchmarks/gpu_check.py works before any GPU time is spent: its CPU tiny run, and its projection arithmetic."""
import json
import os
import subprocess
import sys

import pytest

from benchmarks import gpu_check
from tests.cli import ROOT
from utils.runtime import cpu_native_bf16


def test_gpu_check_runs_on_the_cpu_tiny(tmp_path):
    out = tmp_path / "gc"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu_check.py"), "--device", "cpu", "--tiny",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.load(open(f"{out}.json"))
    status = {r["mode"]: r["status"] for r in report["results"]}
    assert list(status) == list(gpu_check.MODES)
    cpu_modes = {"reference", "default-eager", "default"} | ({"amp-eager", "amp"} if cpu_native_bf16() else set())
    assert {m for m, s in status.items() if s == "measured"} == cpu_modes, status
    assert all(s == "not measured: CUDA only" for m, s in status.items() if gpu_check.MODES[m][2] == ("cuda",))
    assert report["tests"]["status"] == "passed" and "skipped" in report["tests"]["summary"]  # no GPU: skipped, said why
    for r in report["results"]:
        if r["status"] == "measured":
            assert r["warmup_epoch_s"] > 0 and r["robust_epoch_s"] > 0 and r["projected_300_epochs_min"] > 0
            assert r["iterations_per_epoch"] == 576 // 32 and r["state_mib"] > 0
    assert report["machine"]["cpu_kind"]["capability"]
    text = open(f"{out}.md").read()
    assert "| mode | flags | s / warm-up epoch |" in text and "| reference | --reference --num_workers 4 |" in text
    assert proc.stdout.rstrip().splitlines()[-1].startswith("written to")  # the table last, then where it went
    assert "| default | (none) |" in proc.stdout


def test_projection_counts_the_full_set_passes_and_evaluations_of_each_mode():
    figures = dict(first_batch_s=0.5, iterations_per_epoch=100, warmup_iteration_s=0.01, robust_iteration_s=0.02,
                   full_set_pass_s=3.0, val_pass_s=1.0, test_pass_s=2.0, state_host_copy_s=0.1, state_write_s=0.4,
                   device="cuda")
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
