"""Resume after SIGKILL, atomic writes, signals, run-directory protection, non-finite loss."""
import fcntl
import hashlib
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from tests.cli import run, script, tiny_flags

TRAIN = "blind_knowledge_dist_training.py"


def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def run_dir_digests(run_dir):
    return {name: digest(os.path.join(run_dir, name)) for name in sorted(os.listdir(run_dir)) if not name.startswith(".")}


def accuracy_lines(text):
    return [line for line in text.splitlines() if "\tacc on " in line]


def iteration_marker(epoch, iteration, n_epoch=6):
    return f"epoch: {epoch:3d}/{n_epoch - 1:3d}\titer: {iteration:3d}/"


def start(flags, cwd):
    return subprocess.Popen([sys.executable, script(TRAIN), *flags], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def read_until(proc, marker, timeout=240):
    """Collect stdout lines until one contains `marker`."""
    lines, deadline = [], time.time() + timeout
    for line in proc.stdout:
        lines.append(line)
        if marker in line or time.time() > deadline:
            break
    return "".join(lines)


@pytest.fixture(scope="module")
def uninterrupted(synthetic_root, tmp_path_factory):
    results = str(tmp_path_factory.mktemp("uninterrupted"))
    flags = tiny_flags(synthetic_root, results, n_epoch=6, lr_step=4, noisy_val_freq=1, clean_test_freq=2, print_freq=1)
    out = run(TRAIN, *flags, cwd=results).stdout
    return os.path.join(results, "cifar10_worst_seed_0"), out


def test_sigkill_mid_epoch_then_resume_is_exact(synthetic_root, tmp_path, uninterrupted):
    ref_dir, ref_out = uninterrupted
    flags = tiny_flags(synthetic_root, str(tmp_path), n_epoch=6, lr_step=4, noisy_val_freq=1, clean_test_freq=2, print_freq=1)
    proc = start(flags, str(tmp_path))
    first = read_until(proc, iteration_marker(3, 2))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert iteration_marker(3, 2) in first
    run_dir = os.path.join(tmp_path, "cifar10_worst_seed_0")
    assert torch.load(os.path.join(run_dir, "state.pth.tar"), weights_only=True)["epoch"] == 3
    second = run(TRAIN, *flags, "--resume", cwd=str(tmp_path)).stdout
    assert "[bkd] resumed" in second and "after epoch 2" in second
    completed = [line for line in accuracy_lines(first) if int(line.split("\t")[0].split()[1]) <= 2]
    assert completed + accuracy_lines(second) == accuracy_lines(ref_out)
    for name in ("teacher_last.pth.tar", "student_last.pth.tar", "teacher.pth.tar", "student.pth.tar"):
        a = torch.load(os.path.join(run_dir, name), weights_only=True)["state_dict"]
        b = torch.load(os.path.join(ref_dir, name), weights_only=True)["state_dict"]
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert np.array_equal(np.load(os.path.join(run_dir, "detection.npy")), np.load(os.path.join(ref_dir, "detection.npy")))


def test_sigterm_saves_and_says_how_to_resume(synthetic_root, tmp_path, uninterrupted):
    ref_dir, _ = uninterrupted
    flags = tiny_flags(synthetic_root, str(tmp_path), n_epoch=6, lr_step=4, noisy_val_freq=1, clean_test_freq=2, print_freq=1)
    proc = start(flags, str(tmp_path))
    read_until(proc, iteration_marker(2, 1))
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "SIGTERM received" in err and "--resume" in err and len(err.strip().splitlines()) == 1
    run_dir = os.path.join(tmp_path, "cifar10_worst_seed_0")
    assert torch.load(os.path.join(run_dir, "state.pth.tar"), weights_only=True)["epoch"] == 2
    run(TRAIN, *flags, "--resume", cwd=str(tmp_path))
    a = torch.load(os.path.join(run_dir, "teacher_last.pth.tar"), weights_only=True)["state_dict"]
    b = torch.load(os.path.join(ref_dir, "teacher_last.pth.tar"), weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_existing_run_is_not_overwritten(synthetic_root, uninterrupted):
    ref_dir, _ = uninterrupted
    before = run_dir_digests(ref_dir)
    flags = tiny_flags(synthetic_root, os.path.dirname(ref_dir), n_epoch=6, lr_step=4)
    proc = run(TRAIN, *flags, check=False)
    assert proc.returncode == 4
    assert "already holds a run" in proc.stderr and "--resume" in proc.stderr and "--overwrite" in proc.stderr
    assert run_dir_digests(ref_dir) == before


def test_concurrent_run_is_refused(synthetic_root, tmp_path):
    run_dir = tmp_path / "cifar10_worst_seed_0"
    run_dir.mkdir()
    with open(run_dir / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        proc = run(TRAIN, *tiny_flags(synthetic_root, str(tmp_path)), check=False)
    assert proc.returncode == 4 and "in use by another training process" in proc.stderr


def test_non_finite_loss_stops_with_epoch_and_iteration(synthetic_root, tmp_path):
    proc = run(TRAIN, *tiny_flags(synthetic_root, str(tmp_path), lr=1e12, print_freq=1000), check=False)
    assert proc.returncode == 5, proc.stderr
    assert "non-finite loss at epoch 0, iteration" in proc.stderr
    assert not os.path.exists(tmp_path / "cifar10_worst_seed_0" / "state.pth.tar")


WRITER = r"""
import sys, torch
sys.path.insert(0, sys.argv[1])
from utils.files import save_torch
i = 0
while True:
    save_torch({"value": i, "payload": torch.full((2_000_000,), float(i))}, sys.argv[2])
    i += 1
"""


def test_atomic_save_survives_sigkill_during_writes(tmp_path):
    """Kill a process that rewrites a large checkpoint in a loop; the file is always complete."""
    from tests.cli import ROOT

    target = str(tmp_path / "ckpt.pth.tar")
    rng = np.random.RandomState(0)
    for attempt in range(4):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, ROOT, target])
        while not os.path.exists(target):
            time.sleep(0.05)
        time.sleep(rng.uniform(0.1, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        obj = torch.load(target, weights_only=True)
        assert torch.all(obj["payload"] == float(obj["value"]))
