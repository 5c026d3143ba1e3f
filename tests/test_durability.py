"""Resume after SIGKILL, atomic writes, signals, run-directory protection, non-finite loss."""

import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from tests.cli import ROOT, run, script, tiny_flags, tmpfs

TRAIN = "blind_knowledge_dist_training.py"


def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def run_dir_digests(run_dir):
    return {
        name: digest(os.path.join(run_dir, name)) for name in sorted(os.listdir(run_dir)) if not name.startswith(".")
    }


def accuracy_lines(text):
    return [line for line in text.splitlines() if "\tacc on " in line]


def iteration_marker(epoch, iteration, n_epoch=6):
    return f"epoch: {epoch:3d}/{n_epoch - 1:3d}\titer: {iteration:3d}/"


def start(flags, cwd):
    return subprocess.Popen(
        [sys.executable, script(TRAIN), *flags], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


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


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_exact(synthetic_root, tmp_path, uninterrupted):
    ref_dir, ref_out = uninterrupted
    flags = tiny_flags(
        synthetic_root, str(tmp_path), n_epoch=6, lr_step=4, noisy_val_freq=1, clean_test_freq=2, print_freq=1
    )
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
    assert np.array_equal(
        np.load(os.path.join(run_dir, "detection.npy")), np.load(os.path.join(ref_dir, "detection.npy"))
    )


@pytest.mark.slow
def test_sigterm_saves_and_says_how_to_resume(synthetic_root, tmp_path, uninterrupted):
    ref_dir, _ = uninterrupted
    flags = tiny_flags(
        synthetic_root, str(tmp_path), n_epoch=6, lr_step=4, noisy_val_freq=1, clean_test_freq=2, print_freq=1
    )
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


@pytest.mark.slow
def test_existing_run_is_not_overwritten(synthetic_root, uninterrupted):
    ref_dir, _ = uninterrupted
    before = run_dir_digests(ref_dir)
    flags = tiny_flags(synthetic_root, os.path.dirname(ref_dir), n_epoch=6, lr_step=4)
    proc = run(TRAIN, *flags, check=False)
    assert proc.returncode == 4
    assert "already holds a run" in proc.stderr and "--resume" in proc.stderr and "--overwrite" in proc.stderr
    assert run_dir_digests(ref_dir) == before


@pytest.mark.slow
def test_concurrent_run_is_refused(synthetic_root, tmp_path):
    run_dir = tmp_path / "cifar10_worst_seed_0"
    run_dir.mkdir()
    with open(run_dir / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        proc = run(TRAIN, *tiny_flags(synthetic_root, str(tmp_path)), check=False)
    assert proc.returncode == 4 and "in use by another process (a training" in proc.stderr


@pytest.mark.slow
def test_non_finite_loss_stops_with_epoch_and_iteration(synthetic_root, tmp_path):
    proc = run(TRAIN, *tiny_flags(synthetic_root, str(tmp_path), lr=1e12, print_freq=1000), check=False)
    assert proc.returncode == 5, proc.stderr
    assert "non-finite loss at epoch 0, iteration" in proc.stderr
    assert not os.path.exists(tmp_path / "cifar10_worst_seed_0" / "state.pth.tar")


WRITER = r"""
import sys, torch
sys.path.insert(0, sys.argv[1])
from bkd.utils.files import save_torch
i = 0
while True:
    save_torch({"value": i, "payload": torch.full((2_000_000,), float(i))}, sys.argv[2])
    i += 1
"""


@pytest.mark.slow
def test_atomic_save_survives_sigkill_during_writes(tmp_path):
    """Kill a process that rewrites a large checkpoint in a loop; the file is always complete."""
    from tests.cli import ROOT

    target = str(tmp_path / "ckpt.pth.tar")
    rng = np.random.RandomState(0)
    for _attempt in range(4):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, ROOT, target])
        deadline = time.time() + 60
        while not os.path.exists(target):
            assert proc.poll() is None and time.time() < deadline, "the writer never wrote its first file"
            time.sleep(0.05)
        time.sleep(rng.uniform(0.1, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        obj = torch.load(target, weights_only=True)
        assert torch.all(obj["payload"] == float(obj["value"]))


# --- issue 16: nothing lost, nothing stuck ----------------------------------------------------------------------------
def quick_flags(data_root, results, **extra):
    """A --subset run (as every quick-preset run is) of two short epochs."""
    settings = dict(n_epoch=2, subset=200, width=4, print_freq=1, noisy_val_freq=1, clean_test_freq=1)
    return tiny_flags(data_root, results, **dict(settings, **extra))


def interrupt_in_epoch_0(flags, cwd):
    proc = start(flags, cwd)
    read_until(proc, iteration_marker(0, 1, n_epoch=2))
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


@pytest.mark.slow
def test_subset_run_interrupted_in_epoch_0_restarts_with_the_same_command(synthetic_root, tmp_path):
    flags = quick_flags(synthetic_root, str(tmp_path))
    code, err = interrupt_in_epoch_0(flags, str(tmp_path))
    assert code == 130 and "no epoch was completed" in err and "run the same command" in err, err
    assert "--resume" not in err  # it would find nothing to resume
    run_dir = tmp_path / "cifar10_worst_seed_0"
    assert not (run_dir / "state.pth.tar").exists()
    proc = run(TRAIN, *flags, cwd=str(tmp_path))  # the same command starts again
    assert "[bkd] finished" in proc.stdout
    assert torch.load(run_dir / "state.pth.tar", weights_only=True)["epoch"] == 2
    # ... and so does --resume, saying that it starts at epoch 0
    code, _ = interrupt_in_epoch_0(quick_flags(synthetic_root, str(tmp_path), overwrite=True), str(tmp_path))
    assert code == 130
    shutil.rmtree(run_dir)
    run_dir.mkdir()
    np.save(run_dir / "train_subset.npy", np.arange(200))
    proc = run(TRAIN, *flags, "--resume", cwd=str(tmp_path))
    assert "nothing to resume" in proc.stdout and "starting at epoch 0" in proc.stdout


@pytest.mark.slow
def test_launcher_relaunches_a_run_interrupted_in_epoch_0(synthetic_root, tmp_path):
    from tests.cli import data_flags, launch

    results = str(tmp_path)
    run_dir = tmp_path / "cifar10_worst_seed_0_quick"
    run_dir.mkdir()
    np.save(run_dir / "train_subset.npy", np.arange(4000))  # what an interrupt in epoch 0 leaves behind
    (run_dir / "training.log").write_text("epoch 0\n")
    grid = [
        "run",
        "--seeds",
        "0",
        "--noise_types",
        "worst",
        "--results_dir",
        results,
        "--quick",
        "--cpu",
        *data_flags(synthetic_root),
        "--subset",
        "200",
        "--n_epoch",
        "2",
        "--width",
        "4",
        "--device",
        "cpu",
        "--no_download",
    ]
    proc = launch(*grid, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 done" in proc.stdout


@pytest.mark.slow
def test_overwrite_keeps_the_old_run_until_the_new_one_completes_an_epoch(synthetic_root, tmp_path):
    flags = quick_flags(synthetic_root, str(tmp_path))
    run(TRAIN, *flags, cwd=str(tmp_path))
    run_dir = tmp_path / "cifar10_worst_seed_0"
    (run_dir / "learning.log").write_text("Best test acc selected by val is 50.0\n")
    before = run_dir_digests(run_dir)
    # a diverging new run: the old run stays, and the message says so
    proc = run(
        TRAIN, *quick_flags(synthetic_root, str(tmp_path), overwrite=True, lr=1e12), cwd=str(tmp_path), check=False
    )
    assert proc.returncode == 5
    assert "holds the earlier run again" in proc.stderr and "keeps the last" not in proc.stderr
    assert run_dir_digests(run_dir) == before
    # killed in the new run's epoch 0: the next command finds the old run back in place
    proc = start(quick_flags(synthetic_root, str(tmp_path), overwrite=True), str(tmp_path))
    read_until(proc, iteration_marker(0, 1, n_epoch=2))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (run_dir / ".previous" / "state.pth.tar").exists() and not (run_dir / "state.pth.tar").exists()
    proc = run(TRAIN, *flags, "--resume", cwd=str(tmp_path))
    assert "the run it replaced is back" in proc.stdout
    assert run_dir_digests(run_dir) == before
    # a completed first epoch: the old run and its evaluation logs are gone
    proc = run(TRAIN, *quick_flags(synthetic_root, str(tmp_path), overwrite=True, lr=0.01), cwd=str(tmp_path))
    assert not (run_dir / ".previous").exists() and not (run_dir / "learning.log").exists()
    new_curves = {n for n in run_dir_digests(run_dir) if n.startswith("events.out.tfevents.")}  # the new run's own
    assert set(run_dir_digests(run_dir)) - new_curves <= set(before) and not new_curves & set(before)


@pytest.mark.slow
def test_resume_refuses_other_data_or_flags(synthetic_root, tmp_path):
    from tests.synthetic import write_dataset

    flags = quick_flags(synthetic_root, str(tmp_path), n_epoch=3)
    proc = start(flags, str(tmp_path))
    read_until(proc, iteration_marker(1, 0, n_epoch=3))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    other = str(tmp_path / "other")
    write_dataset(other, seed=1)  # same names, other images and labels
    bigger = str(tmp_path / "bigger")
    write_dataset(bigger, n_train=500)
    from bkd.data.labels import safe_load

    relabelled = safe_load(os.path.join(synthetic_root, "CIFAR-10_human.pt"))
    relabelled["worse_label"] = (relabelled["worse_label"] + 1) % 10  # same images, other noisy labels
    torch.save(relabelled, tmp_path / "relabelled.pt")
    cases = {
        "training images differ": (other, {}, 3),  # other pixels and labels under the same file names
        "the training images differ": (bigger, {}, 3),  # more images (the subset draws others)
        "--loader torchvision differs": (synthetic_root, {"loader": "torchvision"}, 2),
        "--width 8 differs": (synthetic_root, {"width": 8}, 2),
        "training labels": (synthetic_root, {"noise_path": str(tmp_path / "relabelled.pt")}, 3),
    }
    for expected, (root, extra, code) in cases.items():
        changed = quick_flags(root, str(tmp_path), n_epoch=3, **extra)
        got = run(TRAIN, *changed, "--resume", cwd=str(tmp_path), check=False)
        assert got.returncode == code and expected in got.stderr, (expected, got.stderr)
        assert len(got.stderr.strip().splitlines()) == 1 and "Traceback" not in got.stderr, got.stderr
    # another thread count resumes, and says the result is no longer bit-equal
    env = dict(os.environ, OMP_NUM_THREADS="2", MKL_NUM_THREADS="2")
    got = subprocess.run(
        [sys.executable, script(TRAIN), *flags, "--resume"],
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert got.returncode == 0, got.stderr
    assert "no longer bit-equal" in got.stdout


def test_disk_full_while_saving_keeps_the_earlier_file(tmp_path):
    from bkd.utils.errors import RunDirError
    from bkd.utils.files import save_numpy

    with tmpfs(tmp_path / "small", "64k", "to fill a disk") as mount:
        target = mount / "detection.npy"
        save_numpy(np.zeros(100, dtype=bool), str(target))
        with pytest.raises(
            RunDirError, match=r"cannot write .*detection.npy \(.* bytes free there\); the earlier file is kept"
        ):
            save_numpy(np.zeros(200_000, dtype=bool), str(target))
        assert np.load(target).shape == (100,)
        assert [p.name for p in mount.iterdir()] == ["detection.npy"]  # no temporary file left


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_outputs_honour_the_umask(tmp_path, umask, mode):
    from tests.cli import ROOT

    code = (
        f"import os, sys; os.umask({umask}); sys.path.insert(0, sys.argv[1]); from bkd.utils.files import save_json; "
        "save_json({'a': 1}, sys.argv[2])"
    )
    subprocess.run([sys.executable, "-c", code, ROOT, str(tmp_path / "m.json")], check=True)
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == mode


# A call that never returns to Python: a read with SA_RESTART (signal.siginterrupt False), as a hung kernel is, so that
# Python's own handler never runs. Only the watchdog thread, woken by the signal itself, can end it.
STUCK_IN_NATIVE_CODE = """
import ctypes, os, signal, sys
from bkd.utils.stops import StopFlag
kept = "the run directory keeps epochs 0..2: run the same command with --resume"
StopFlag(lambda: kept, grace_s=float(sys.argv[1])).install().defer("in epoch 3, iteration 7")  # (as the loop has it)
for sig in (signal.SIGINT, signal.SIGTERM):
    signal.siginterrupt(sig, False)
read, write = os.pipe()
print("stuck", flush=True)
ctypes.CDLL(None).read(read, ctypes.create_string_buffer(1), 1)
"""


@pytest.mark.parametrize(
    "signals, grace_s, says",
    [((signal.SIGTERM,), 1, "1 s after SIGTERM"), ((signal.SIGINT, signal.SIGINT), 600, "after a second SIGINT")],
)
def test_a_process_stuck_in_native_code_still_stops_when_asked_with_one_line(tmp_path, signals, grace_s, says):
    import time

    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen(
        [sys.executable, "-c", STUCK_IN_NATIVE_CODE, str(grace_s)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "stuck"
    started = time.time()
    for sig in signals:
        proc.send_signal(sig)
        time.sleep(0.3)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and time.time() - started < 20
    assert err.strip().splitlines() == [
        f"error: still running {says} in epoch 3, iteration 7 (inside a long native call: a kernel, a compilation, "
        "a pass or a read), so it was stopped at once; the run directory keeps epochs 0..2: run the same command "
        "with --resume"
    ]
