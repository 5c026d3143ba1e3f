"""The grid launcher on this machine: parallel dispatch, a failing run, idempotence, Ctrl-C, status and summary."""
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time

from tests.cli import GRID_TINY, ROOT, data_flags, grid_flags, launch
from tests.conftest import complete_local_grid


def test_grids_and_flag_routing():
    from launch.__main__ import split_flags
    from launch.grid import make_grid

    assert [r.name for r in make_grid()] == ["cifar10_aggre_seed_0", "cifar10_worst_seed_0", "cifar10_rand1_seed_0"]
    challenge = make_grid("challenge")
    assert len(challenge) == 20 and {r.dataset for r in challenge if r.noise_type == "noisy100"} == {"cifar100"}
    assert sorted({r.seed for r in challenge}) == [0, 1, 2, 3, 4]
    assert [r.name for r in make_grid(seeds=[3], noise_types=["noisy100"], preset="quick")] == ["cifar100_noisy100_seed_3_quick"]
    assert make_grid(noise_types=["noisy100"], dataset="cifar10")[0].name == "cifar10_noisy100_seed_0"  # fails in training
    train, evaluation = split_flags(["--n_epoch", "3", "--noise_path", "x.pt", "--width", "4", "--device", "cpu", "--reference"])
    assert train == ["--n_epoch", "3", "--noise_path", "x.pt", "--width", "4", "--device", "cpu", "--reference"]
    assert evaluation == ["--n_epoch", "3", "--noise_path", "x.pt", "--device", "cpu", "--reference"]  # not --width


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
    from utils.report import grid_summary

    per_set, per_seed = grid_summary(make_grid(seeds=[0, 1], noise_types=["aggre", "worst"], results_dir=results))
    aggre, worst = per_set
    assert aggre["seeds"] == "2 of 2" and " ± " in aggre["F1"] and " ± " in aggre["test acc, last (%)"]
    assert worst["seeds"] == "1 of 2" and " ± " not in worst["F1"]  # the failed seed is not averaged in
    failed = [r for r in per_seed if r["state"] == "failed"]
    assert len(failed) == 1 and failed[0]["seed"] == 1 and failed[0]["F1"] == ""
    metrics = json.load(open(os.path.join(results, "cifar10_worst_seed_0", "metrics.json")))
    assert [r for r in per_seed if r["label set"] == "worst" and r["seed"] == 0][0]["F1"] == f"{metrics['detection']['f1']:.3f}"


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


def test_ctrl_c_stops_every_run_and_the_next_launch_resumes(synthetic_root, tmp_path):
    results = str(tmp_path)
    flags = ["run", *grid_flags(results, seeds=(0,)), "--cpu", "--parallel", "2", "--threads", "1", *GRID_TINY,
             *data_flags(synthetic_root)]
    proc = subprocess.Popen([sys.executable, "-m", "launch", *flags], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
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
