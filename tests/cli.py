"""Run the project's scripts as a user types them; a small real disk for the tests that fill one."""

import hashlib
import os
import subprocess
import sys
from contextlib import contextmanager

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def script(name):
    return os.path.join(ROOT, name)


def run(name, *flags, cwd=None, check=True, timeout=300, env=None):
    proc = subprocess.run(
        [sys.executable, script(name), *map(str, flags)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{name} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def tiny_flags(data_root, results_dir, noise_type="worst", **extra):
    """A narrow network, a few epochs: seconds on a CPU."""
    flags = dict(
        data_root=data_root,
        noise_path=os.path.join(data_root, "CIFAR-10_human.pt"),
        noise_type=noise_type,
        results_dir=results_dir,
        n_epoch=8,
        width=8,
        batch_size=32,
        lr_step=6,
        noisy_val_freq=2,
        clean_test_freq=4,
        print_freq=5,
        eval_batch_size=256,
        device="cpu",
        no_download=True,
    )
    flags.update(extra)
    out = []
    for key, value in flags.items():
        if value is True:
            out.append(f"--{key}")
        elif value is not False and value is not None:
            out += [f"--{key}", str(value)]
    return out


# A tiny grid for the launcher tests (local and SLURM): 2 seeds x 2 label sets, narrow network, 4 epochs.
GRID_TINY = [
    "--n_epoch",
    "4",
    "--width",
    "4",
    "--batch_size",
    "32",
    "--lr_step",
    "3",
    "--noisy_val_freq",
    "2",
    "--clean_test_freq",
    "3",
    "--eval_batch_size",
    "256",
    "--device",
    "cpu",
    "--no_download",
]
GRID_RUNS = ("cifar10_aggre_seed_0", "cifar10_worst_seed_0", "cifar10_aggre_seed_1", "cifar10_worst_seed_1")


def launch(*args, check_code=None, timeout=300, env=None):
    """python -m launch ... as a user types it."""
    proc = subprocess.run(
        [sys.executable, "-m", "launch", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    if check_code is not None:
        assert proc.returncode == check_code, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def grid_flags(results, seeds=(0, 1), noise_types=("aggre", "worst")):
    return ["--seeds", *map(str, seeds), "--noise_types", *noise_types, "--results_dir", results]


def data_flags(data_root):
    return ["--data_root", data_root, "--noise_path", os.path.join(data_root, "CIFAR-10_human.pt")]


def local_grid_flags(results, data_root):
    """The local launcher on the tiny grid: 2 runs at a time, 1 thread each."""
    return [
        "run",
        *grid_flags(results),
        "--cpu",
        "--parallel",
        "2",
        "--threads",
        "1",
        *GRID_TINY,
        *data_flags(data_root),
    ]


@contextmanager
def tmpfs(path, size, purpose):
    """A real tmpfs of `size` mounted at `path` for the test (root only: skipped elsewhere, saying why), unmounted
    after."""
    import pytest

    path.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    ).returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root) {purpose}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)])  # (lazy: a file a failed test left open does not keep it)


def digests(folder):
    return {
        n: hashlib.sha256(open(os.path.join(folder, n), "rb").read()).hexdigest()
        for n in sorted(os.listdir(folder))
        if not n.startswith(".")
    }
