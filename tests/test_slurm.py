"""The SLURM launcher against a real one-node SLURM cluster (scripts/slurm_local.sh), not a mock.

A tiny grid (2 seeds x 2 label sets, narrow network, one thread per run) goes through
`python -m launch run --slurm`. While they train, one task is pre-empted the polite way
(`scancel --signal=USR2`: submitit's checkpoint stops training and requeues the task) and one
the rude way (`scontrol requeue`: killed without warning, restarted). Every run must finish,
every epoch must be completed exactly once, and every output must equal the same grid run
with the local launcher. Skips only where SLURM cannot be started (not root, no apt).
"""
import json
import os
import re
import shutil
import subprocess
import time

import numpy as np
import pytest
import torch

from tests.cli import GRID_RUNS as RUNS
from tests.cli import GRID_TINY as TINY
from tests.cli import ROOT, data_flags, grid_flags, launch
from tests.conftest import complete_local_grid

SCRIPT = os.path.join(ROOT, "scripts", "slurm_local.sh")
N_EPOCH = int(TINY[TINY.index("--n_epoch") + 1])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("starting a local SLURM needs root (apt install, daemons)")
    if shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
        pytest.skip("SLURM is not installed and there is no apt-get to install it")
    env = dict(os.environ, BKD_SLURM_DIR=str(tmp_path_factory.mktemp("slurm")), BKD_SLURM_CPUS="8")
    started = subprocess.run(["bash", SCRIPT, "start"], env=env, capture_output=True, text=True, timeout=300)
    if started.returncode != 0:
        pytest.skip(f"SLURM could not be started here: {started.stderr.strip().splitlines()[-1:]}")
    exports = subprocess.run(["bash", SCRIPT, "env"], env=env, capture_output=True, text=True).stdout
    conf, path = re.search(r"SLURM_CONF=(\S+) PATH=(\S+):\$PATH", exports).groups()
    env.update(SLURM_CONF=conf, PATH=f"{path}:{env['PATH']}")
    yield env
    stopped = subprocess.run(["bash", SCRIPT, "stop"], env=env, capture_output=True, text=True, timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    assert not _daemons(), f"left behind: {_daemons()}"


def _daemons():
    """Live (not zombie) SLURM and munge processes."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().split()
        except OSError:
            continue
        if fields[1].strip("()") in ("slurmctld", "slurmd", "slurmstepd", "munged") and fields[2] != "Z":
            found.append((pid, fields[1]))
    return found


def _wait_for(predicate, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _log(results, name):
    path = os.path.join(results, name, "training.log")
    return open(path).read() if os.path.exists(path) else ""


def _job(results, name):
    record = os.path.join(results, name, "launch.json")
    return json.load(open(record)).get("job_id") if os.path.exists(record) else None


def test_grid_on_slurm_survives_requeues_and_equals_the_local_grid(cluster, local_grid, synthetic_root, tmp_path):
    env = cluster
    slurm_results, (local_results, _) = str(tmp_path / "slurm"), local_grid
    grid = grid_flags(slurm_results)
    submitted = launch("run", *grid, "--slurm", "--gpus", 0, "--cpus", 1, "--mem_gb", 0.5, "--time_min", 60,
                       *TINY, *data_flags(synthetic_root), env=env)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    assert submitted.stdout.count("submitted as job") == 4

    # While they train: USR2 (pre-emption / time-out warning) to one task, `scontrol requeue` to another.
    polite, rude = RUNS[0], RUNS[3]
    for name, command in ((polite, ["scancel", "--signal=USR2"]), (rude, ["scontrol", "requeue"])):
        _wait_for(lambda: "epoch 2\n" in _log(slurm_results, name), 240, f"{name} to reach epoch 2")
        subprocess.run(command + [_job(slurm_results, name)], env=env, check=True, timeout=30)
    relaunch = launch("run", *grid, "--slurm", "--gpus", 0, "--cpus", 1, "--mem_gb", 0.5, *TINY, *data_flags(synthetic_root),
                      env=env)  # idempotent: nothing is submitted twice
    assert "submitted as job" not in relaunch.stdout, relaunch.stdout

    from launch.grid import make_grid, status

    runs = make_grid(seeds=[0, 1], noise_types=["aggre", "worst"], results_dir=slurm_results)

    def all_done():
        time.sleep(1)
        return all(status(run)["state"] == "done" for run in runs)

    _wait_for(all_done, 420, "all four runs to finish")
    listing = launch("status", *grid, env=env).stdout
    assert re.search(rf"{polite}\s+done\s+{N_EPOCH - 1}/{N_EPOCH - 1}\s+\d+_\d+", listing), listing

    for name in RUNS:
        text = _log(slurm_results, name)
        completed = sorted(map(int, re.findall(r"^epoch: (\d+)\ttime elapsed", text, re.M)))
        assert completed == list(range(N_EPOCH)), f"{name}: epochs completed {completed}"
    assert "[bkd] resumed" in _log(slurm_results, polite) and "[bkd] resumed" in _log(slurm_results, rude)

    # The same grid with the local launcher, one thread per run: the same outputs, bit for bit.
    complete_local_grid(local_results, synthetic_root)
    for name in RUNS:
        a, b = os.path.join(slurm_results, name), os.path.join(local_results, name)
        assert open(os.path.join(a, "detection.npy"), "rb").read() == open(os.path.join(b, "detection.npy"), "rb").read(), name
        for ckpt in ("teacher_last.pth.tar", "student_last.pth.tar", "teacher.pth.tar"):
            x = torch.load(os.path.join(a, ckpt), weights_only=True)["state_dict"]
            y = torch.load(os.path.join(b, ckpt), weights_only=True)["state_dict"]
            assert all(torch.equal(x[k], y[k]) for k in x), (name, ckpt)
        ma, mb = (json.load(open(os.path.join(d, "metrics.json"))) for d in (a, b))
        for key in ("val_acc", "test_acc", "mean_top_student_all_epochs", "otsu_full", "detection", "learning"):
            assert ma[key] == mb[key], (name, key)
        assert np.array_equal(np.load(os.path.join(a, "agreement.npy")), np.load(os.path.join(b, "agreement.npy")))
