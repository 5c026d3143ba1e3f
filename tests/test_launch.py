"""The grid launcher: on this machine (parallel dispatch, a failing run, idempotence, Ctrl-C, status and summary)
and on a real one-node SLURM cluster (scripts/slurm_local.sh), not a mock.

The local tests share one tiny grid (2 seeds x 2 label sets, narrow network, 4 epochs, one thread per run),
launched with cifar10_worst_seed_1 failing. The SLURM test runs the same grid through `python -m launch run
--slurm`; while the runs train, one task is pre-empted the polite way (`scancel --signal=USR2`: submitit's
checkpoint stops training and requeues the task) and one the rude way (`scontrol requeue`: killed without
warning, restarted). Every run must finish, every epoch must be completed exactly once, and every output
must equal the local launcher's. It skips only where SLURM cannot be started (not root, no apt).
"""

import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from tests.cli import GRID_RUNS as RUNS
from tests.cli import GRID_TINY, ROOT, data_flags, grid_flags, launch, local_grid_flags


@pytest.fixture(scope="module")
def local_grid(synthetic_root, tmp_path_factory):
    """The tiny grid run by the local launcher, with cifar10_worst_seed_1 failing (its directory holds a foreign
    file). Returns (results dir, the launcher's CompletedProcess). Later tests remove the file and relaunch."""
    results = str(tmp_path_factory.mktemp("grid"))
    foreign = os.path.join(results, "cifar10_worst_seed_1")
    os.makedirs(foreign)
    with open(os.path.join(foreign, "detection.npy"), "w") as fh:
        fh.write("not ours")
    return results, launch(*local_grid_flags(results, synthetic_root))


def complete_local_grid(results, data_root):
    """Finish the local grid (idempotent: only what is missing runs)."""
    foreign = os.path.join(results, "cifar10_worst_seed_1", "detection.npy")
    if os.path.exists(foreign) and open(foreign, "rb").read() == b"not ours":
        os.remove(foreign)
    return launch(*local_grid_flags(results, data_root), check_code=0)


def test_a_seed_or_label_set_given_twice_is_one_run():
    from launch.grid import make_grid

    runs = make_grid(seeds=[0, 0], noise_types=["worst", "worst"])
    assert [r.name for r in runs] == ["cifar10_worst_seed_0"]  # the final report counts 1 run, which trained once


def test_status_tells_a_finished_training_whose_evaluations_did_not_run_from_an_interrupted_one(tmp_path):
    import json

    from launch.grid import Run, status

    run = Run("cifar10", "worst", 0, str(tmp_path))
    os.makedirs(run.path)
    open(run.file("training.log"), "w").close()
    metrics = {"epochs_completed": 40, "config": {"n_epoch": 40}}
    json.dump(metrics, open(run.file("metrics.json"), "w"))
    trained = status(run)
    assert trained["state"] == "trained" and trained["epoch"] == 39 and "not run yet" in trained["detail"]
    json.dump(dict(metrics, epochs_completed=12), open(run.file("metrics.json"), "w"))
    assert status(run)["state"] == "interrupted"


def test_grids_and_flag_routing():
    from launch.__main__ import split_flags
    from launch.grid import make_grid

    assert [r.name for r in make_grid()] == ["cifar10_aggre_seed_0", "cifar10_worst_seed_0", "cifar10_rand1_seed_0"]
    challenge = make_grid("challenge")
    assert len(challenge) == 20 and {r.dataset for r in challenge if r.noise_type == "noisy100"} == {"cifar100"}
    assert sorted({r.seed for r in challenge}) == [0, 1, 2, 3, 4]
    assert [r.name for r in make_grid(seeds=[3], noise_types=["noisy100"], preset="quick")] == [
        "cifar100_noisy100_seed_3_quick"
    ]
    # fails in training
    assert make_grid(noise_types=["noisy100"], dataset="cifar10")[0].name == "cifar10_noisy100_seed_0"
    train, evaluation = split_flags(
        ["--n_epoch", "3", "--noise_path", "x.pt", "--width", "4", "--device", "cpu", "--reference"]
    )
    assert train == ["--n_epoch", "3", "--noise_path", "x.pt", "--width", "4", "--device", "cpu", "--reference"]
    assert evaluation == ["--n_epoch", "3", "--noise_path", "x.pt", "--device", "cpu", "--reference"]  # not --width


@pytest.mark.slow
def test_failed_run_does_not_stop_the_others(local_grid):
    results, proc = local_grid
    assert proc.returncode == 4, proc.stdout + proc.stderr  # the failed run's exit code (run directory holds a run)
    log = os.path.join(results, "cifar10_worst_seed_1", "training.stderr")
    assert f"failed: cifar10_worst_seed_1: training exited 4; log {log}" in proc.stdout
    assert "already holds a run" in open(log).read()
    assert "== grid: 3 done, 1 failed of 4 runs" in proc.stdout
    for name in ("cifar10_aggre_seed_0", "cifar10_aggre_seed_1", "cifar10_worst_seed_0"):
        assert "The f-score is" in open(os.path.join(results, name, "detection.log")).read()
        metrics = json.load(open(os.path.join(results, name, "metrics.json")))
        assert metrics["machine"]["num_threads"] == 1 and metrics["epochs_completed"] == 4


def test_runs_went_two_at_a_time(local_grid):
    results, _ = local_grid
    spans = []
    for name in ("cifar10_aggre_seed_0", "cifar10_aggre_seed_1", "cifar10_worst_seed_0"):
        record = json.load(open(os.path.join(results, name, "launch.json")))
        spans.append((record["started"], record["finished"]))
    spans.sort()
    assert spans[1][0] < spans[0][1], "the first two runs did not overlap"
    assert spans[2][0] >= min(spans[0][1], spans[1][1]) - 1, "a third run started while two were running"


def test_status_and_summary_of_a_partly_failed_grid(local_grid):
    results, _ = local_grid
    out = launch("status", *grid_flags(results), check_code=0).stdout
    assert re.search(r"cifar10_aggre_seed_0\s+done\s+3/3", out)
    assert re.search(r"cifar10_worst_seed_1\s+failed\s+-\s+training exited 4", out)
    from launch.grid import make_grid
    from launch.summary import grid_summary

    per_set, per_seed = grid_summary(make_grid(seeds=[0, 1], noise_types=["aggre", "worst"], results_dir=results))
    aggre, worst = per_set
    assert aggre["seeds"] == "2 of 2" and " ± " in aggre["F1"] and " ± " in aggre["test acc, last (%)"]
    assert worst["seeds"] == "1 of 2" and " ± " not in worst["F1"]  # the failed seed is not averaged in
    failed = [r for r in per_seed if r["state"] == "failed"]
    assert len(failed) == 1 and failed[0]["seed"] == 1 and failed[0]["F1"] == ""
    metrics = json.load(open(os.path.join(results, "cifar10_worst_seed_0", "metrics.json")))
    assert [r for r in per_seed if r["label set"] == "worst" and r["seed"] == 0][0][
        "F1"
    ] == f"{metrics['detection']['f1']:.3f}"


@pytest.mark.slow
def test_launching_again_skips_finished_runs_retries_the_failed_one_and_leaves_running_ones(local_grid, synthetic_root):
    results, _ = local_grid
    finished = os.path.join(results, "cifar10_aggre_seed_0", "teacher.pth.tar")
    before = os.stat(finished).st_mtime_ns
    held = open(os.path.join(results, "cifar10_aggre_seed_1", ".launch.lock"), "a+")
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another launcher is running this run
    try:
        proc = complete_local_grid(results, synthetic_root)
    finally:
        held.close()
    assert "== cifar10_aggre_seed_0: already finished; skipped" in proc.stdout
    assert "== cifar10_aggre_seed_1: already running elsewhere; left alone" in proc.stdout
    assert "== cifar10_worst_seed_1: done" in proc.stdout
    assert os.stat(finished).st_mtime_ns == before
    summary = launch("summary", *grid_flags(results), check_code=0).stdout
    assert "| worst | 2 of 2 |" in summary and os.path.exists(os.path.join(results, "summary.csv"))


@pytest.mark.slow
def test_ctrl_c_stops_every_run_and_the_next_launch_resumes(synthetic_root, tmp_path):
    results = str(tmp_path)
    flags = [
        "run",
        *grid_flags(results, seeds=(0,)),
        "--cpu",
        "--parallel",
        "2",
        "--threads",
        "1",
        *GRID_TINY,
        *data_flags(synthetic_root),
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "launch", *flags], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    logs = [os.path.join(results, f"cifar10_{t}_seed_0", "training.log") for t in ("aggre", "worst")]
    deadline = time.time() + 240
    while time.time() < deadline and not all(os.path.exists(p) and "epoch 2\n" in open(p).read() for p in logs):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert "== interrupted: stopping 2 run(s)" in out
    assert "interrupted; resumable" in out
    left = subprocess.run(["pgrep", "-f", f"results_dir {results}"], capture_output=True, text=True).stdout.split()
    assert not left, f"training processes left running: {left}"
    for log in logs:
        assert os.path.exists(os.path.join(os.path.dirname(log), "state.pth.tar"))
    status = launch("status", *grid_flags(results, seeds=(0,)), check_code=0).stdout
    assert status.count("interrupted") == 2
    launch(*flags, check_code=0)
    for log in logs:
        text = open(log).read()
        assert "[bkd] resumed" in text
        # every epoch completed exactly once across the two launches
        assert sorted(re.findall(r"^epoch: (\d+)\ttime elapsed", text, re.M), key=int) == [str(e) for e in range(4)]


# --- SLURM ------------------------------------------------------------------------------------------
SCRIPT = os.path.join(ROOT, "scripts", "slurm_local.sh")
N_EPOCH = int(GRID_TINY[GRID_TINY.index("--n_epoch") + 1])


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


@pytest.mark.slow
def test_grid_on_slurm_survives_requeues_and_equals_the_local_grid(cluster, local_grid, synthetic_root, tmp_path):
    env = cluster
    slurm_results, (local_results, _) = str(tmp_path / "slurm"), local_grid
    grid = grid_flags(slurm_results)
    submitted = launch(
        "run",
        *grid,
        "--slurm",
        "--gpus",
        0,
        "--cpus",
        1,
        "--mem_gb",
        0.5,
        "--time_min",
        60,
        *GRID_TINY,
        *data_flags(synthetic_root),
        env=env,
    )
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    assert submitted.stdout.count("submitted as job") == 4

    # While they train: USR2 (pre-emption / time-out warning) to one task, `scontrol requeue` to another.
    polite, rude = RUNS[0], RUNS[3]
    for name, command in ((polite, ["scancel", "--signal=USR2"]), (rude, ["scontrol", "requeue"])):
        _wait_for(lambda name=name: "epoch 2\n" in _log(slurm_results, name), 240, f"{name} to reach epoch 2")
        subprocess.run(command + [_job(slurm_results, name)], env=env, check=True, timeout=30)
    # idempotent: nothing is submitted twice
    relaunch = launch(
        "run",
        *grid,
        "--slurm",
        "--gpus",
        0,
        "--cpus",
        1,
        "--mem_gb",
        0.5,
        *GRID_TINY,
        *data_flags(synthetic_root),
        env=env,
    )
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
        assert (
            open(os.path.join(a, "detection.npy"), "rb").read() == open(os.path.join(b, "detection.npy"), "rb").read()
        ), name
        for ckpt in ("teacher_last.pth.tar", "student_last.pth.tar", "teacher.pth.tar"):
            x = torch.load(os.path.join(a, ckpt), weights_only=True)["state_dict"]
            y = torch.load(os.path.join(b, ckpt), weights_only=True)["state_dict"]
            assert all(torch.equal(x[k], y[k]) for k in x), (name, ckpt)
        ma, mb = (json.load(open(os.path.join(d, "metrics.json"))) for d in (a, b))
        for key in ("val_acc", "test_acc", "mean_top_student_all_epochs", "otsu_full", "detection", "learning"):
            assert ma[key] == mb[key], (name, key)
        assert np.array_equal(np.load(os.path.join(a, "agreement.npy")), np.load(os.path.join(b, "agreement.npy")))


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--parallel", "-1"], "--parallel -1 must be at least 1"),
        (["run", "--threads", "0"], "--threads 0 must be at least 1"),
        (["run", "--noise_types", "bogus"], "'bogus' is unknown"),
        (["run", "--dataset", "custom"], "the launcher runs CIFAR-N grids"),
        (["status"], "no such directory"),
        (["summary"], "no such directory"),
    ],
)
def test_launcher_refuses_bad_input_and_creates_nothing(args, message, tmp_path):
    results = tmp_path / "results"
    proc = launch(*args, "--results_dir", results)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not results.exists()


def test_sequential_failure_reason_is_in_the_run_log(synthetic_root, tmp_path):
    results = str(tmp_path)
    missing = os.path.join(results, "none.pt")  # found missing only when the training loads its labels
    proc = launch(
        "run",
        "--seeds",
        "0",
        "--noise_types",
        "worst",
        "--results_dir",
        results,
        "--cpu",
        *data_flags(synthetic_root),
        "--device",
        "cpu",
        "--no_download",
        "--noise_path",
        missing,
    )
    assert proc.returncode == 3, proc.stdout + proc.stderr
    log = os.path.join(results, "cifar10_worst_seed_0", "training.log")
    assert f"see {log}" in proc.stdout
    assert f"[bkd] error: --noise_path {missing}" in open(log).read()
