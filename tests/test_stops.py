"""Stops that stop, and the last corners (docs/reliability.md, 'Signals'): the watchdog counts only its own process's
signals and never blocks; a stop before the run starts comes at once, saying what the process was doing; an
--overwritten run comes back whole, or stays whole aside, whatever the timing of signals and kills; no command blocks on
a file that is not a regular file; closed streams, the API's arguments and its process-wide state; lines that say the
truth about where things are."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from bkd import rundir as rd
from tests.cli import ROOT, digests, launch, run, script, tiny_flags
from tests.test_bad_input import _copy_run, _detection_argv, _learning_argv

TRAIN = "blind_knowledge_dist_training.py"


def _read_until(proc, needle, timeout=120):
    """Lines of proc's stdout until one holds `needle` (the process keeps running)."""
    deadline, seen = time.time() + timeout, []
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return seen
    raise AssertionError(f"never printed {needle!r}:\n{''.join(seen)}")


# 1. one Ctrl-C in a terminal reaches the loader's workers too -----------------------------------------------------
ONE_CTRL_C = """
import multiprocessing, os, signal, sys, time
from bkd.utils.errors import Interrupted
from bkd.utils.stops import StopFlag
flag = StopFlag(lambda: "the run directory keeps epochs 0..0").install()
flag.defer("in epoch 1, iteration 3")
worker = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,))  # as a DataLoader worker is made
worker.start()
print("ready", flush=True)
time.sleep(5)  # a pass of the network that takes longer than the watchdog gives a second signal (3 s)
try:
    flag.check("epoch 1, validation")
except Interrupted as err:
    print("clean stop:", err, flush=True)
worker.kill()
"""


@pytest.mark.slow
def test_one_ctrl_c_to_the_process_group_is_one_signal_whatever_the_workers(tmp_path):
    """A terminal sends Ctrl-C to the whole process group, DataLoader workers included: their signals woke the
    watchdog too, which took them for a second Ctrl-C and ended the run 3 s later instead of at its next check."""
    proc = subprocess.Popen(
        [sys.executable, "-c", ONE_CTRL_C],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # (a process group of its own, as a terminal's foreground job)
    )
    try:
        assert proc.stdout.readline() == "ready\n"
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert out.strip() == "clean stop: SIGINT received during epoch 1, validation" and proc.returncode == 0, out + err


# 2. the watchdog's line never blocks ----------------------------------------------------------------------------------
BLOCKED_STDOUT = """
import sys
from bkd.utils.stops import StopFlag
StopFlag(lambda: "the run directory keeps epochs 0..2", grace_s=1).install().defer("in epoch 3, iteration 7")
sys.stderr.write("filling\\n"); sys.stderr.flush()
while True:  # standard output: a pipe nobody reads (a paused `| less`); this write blocks once it is full
    sys.stdout.write("x" * 65536)
    sys.stdout.flush()
"""


def test_sigterm_with_standard_output_a_pipe_nobody_reads_still_ends(tmp_path):
    """The watchdog wrote its line to the blocked standard output before ending the process, which stayed alive."""
    proc = subprocess.Popen(
        [sys.executable, "-c", BLOCKED_STDOUT],
        env=dict(os.environ, PYTHONPATH=ROOT),
        stdout=subprocess.PIPE,  # never read
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stderr.readline() == b"filling\n"
        time.sleep(0.5)  # (the pipe fills: the main thread is blocked in its write)
        started = time.time()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 130 and time.time() - started < 10
    err = proc.stderr.read().decode()
    assert "still running 1 s after SIGTERM in epoch 3, iteration 7" in err and "keeps epochs 0..2" in err, err


# 3. a stop while the data loads ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_sigterm_while_the_data_loads_stops_at_once_saying_so(tmp_path):
    """The stop was checked only from the first iteration: a long load ran on, and 30 s later the watchdog blamed a
    long native call. Until the run starts there is nothing to keep, so a signal stops the process where it is."""
    from PIL import Image

    folder = tmp_path / "images"
    rng = np.random.RandomState(0)
    for c in range(2):
        (folder / f"class{c}").mkdir(parents=True)
        for i in range(1500):
            Image.fromarray(rng.randint(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"class{c}" / f"{i}.png")
    proc = subprocess.Popen(
        [sys.executable, script(TRAIN), "--dataset", "custom", "--data_file", folder, "--results_dir", tmp_path]
        + ["--device", "cpu", "--n_epoch", "1", "--width", "2"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _read_until(proc, "cpu")  # the device line: the data loads next
    proc.send_signal(signal.SIGTERM)
    started = time.time()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and time.time() - started < 10, err
    assert err.strip().splitlines() == [
        "error: SIGTERM received while loading the data; nothing was written "
        f"({os.path.join(str(tmp_path), 'custom_images_seed_0')} is not there): run the same command to start again"
    ]


# 4. --overwrite's earlier run, whatever the timing ----------------------------------------------------------------
EARLIER = {
    rd.STATE: b"state",
    rd.TEACHER: b"teacher",
    rd.STUDENT: b"student",
    rd.TEACHER_LAST: b"teacher last",
    rd.STUDENT_LAST: b"student last",
    rd.DETECTION: b"detection",
    rd.METRICS: b"{}",
    "learning.log": b"learning",
    "events.out.tfevents.1.host.1.0": b"curves",
}


def _earlier_run(path):
    os.makedirs(path)
    for name, data in EARLIER.items():
        with open(os.path.join(path, name), "wb") as fh:
            fh.write(data)
    return digests(path)


def _new_run_started_aside(path):
    """An --overwrite of the earlier run: it is aside, and the new run wrote what an epoch 0 writes before it ends."""
    run = rd.RunDir(path).open(overwrite=True)
    run.start_fresh()
    for name, data in ((rd.TEACHER, b"new teacher"), (rd.SUBSET, b"new subset"), ("events.out.tfevents.2.h.2.0", b"x")):
        with open(run.file(name), "wb") as fh:
            fh.write(data)
    return run


class Kill(BaseException):
    """A kill -9 (or the end of power) between two file operations: nothing after it runs in this process."""


def _died(run):
    """What the kernel does for a killed process: its lock goes (nothing else of it runs)."""
    if run._lock is not None:
        run._lock.close()
        run._lock = None


def _killing_at(monkeypatch, k):
    """The k-th rename or removal of bkd.rundir's (counting from 0) never happens: the process dies there."""
    calls = {"n": 0}
    real = {name: getattr(os, name) for name in ("replace", "remove")}

    def dying(name):
        def op(*args, **kwargs):
            if calls["n"] == k:
                raise Kill
            calls["n"] += 1
            return real[name](*args, **kwargs)

        return op

    for name in real:
        monkeypatch.setattr(rd.os, name, dying(name))
    return calls


@pytest.mark.parametrize("k", range(14))
def test_an_overwritten_run_comes_back_whole_after_a_kill_at_any_point_of_its_restore(tmp_path, monkeypatch, k):
    """The new run stops in epoch 0 and the earlier run is being put back when the process dies at the k-th file
    operation: the next command finishes the restore, and the earlier run is whole (the restore used to delete, on a
    second pass, what its first had already put back)."""
    path = str(tmp_path / "run")
    before = _earlier_run(path)
    run = _new_run_started_aside(path)
    _killing_at(monkeypatch, k)
    try:
        run.close()  # the new run completed no epoch: the earlier one goes back
    except Kill:
        _died(run)
    monkeypatch.undo()
    rd.RunDir(path).open(overwrite=True).close()  # the next command in the directory (here: another --overwrite)
    assert digests(path) == before and not os.path.exists(os.path.join(path, rd.PREVIOUS))


@pytest.mark.parametrize("k", range(12))
def test_an_overwrite_killed_while_moving_the_earlier_run_aside_leaves_it_whole(tmp_path, monkeypatch, k):
    path = str(tmp_path / "run")
    before = _earlier_run(path)
    run = rd.RunDir(path).open(overwrite=True)
    _killing_at(monkeypatch, k)
    try:
        run.start_fresh()
    except Kill:
        _died(run)
    else:  # (every file aside: the new run stops before its first epoch, and its close puts the earlier one back)
        monkeypatch.undo()
        run.close()
    monkeypatch.undo()
    rd.RunDir(path).open(overwrite=True).close()
    assert digests(path) == before


# (in a process of its own: Python delivers signals to its main thread, which pytest-xdist's tests do not run in)
STOP_DURING_RESTORE = """
import os, signal, sys
from bkd import rundir as rd
from tests.test_stops import _earlier_run, _new_run_started_aside
from tests.cli import digests
path = sys.argv[1]
before = _earlier_run(path)
run = _new_run_started_aside(path)
real_replace, sent = os.replace, []
def replace_with_a_ctrl_c(*args):  # a Ctrl-C in the middle of the restore
    if not sent:
        sent.append(os.kill(os.getpid(), signal.SIGINT))
    return real_replace(*args)
rd.os.replace = replace_with_a_ctrl_c
try:
    run.close()
    print("no KeyboardInterrupt")
except KeyboardInterrupt:  # after the restore: delivered once the signals are no longer held
    rd.os.replace = real_replace
    print(sent == [None], digests(path) == before, run.describe())
"""


def test_a_stop_during_the_restore_waits_for_it_and_the_line_says_the_earlier_run_is_back(tmp_path):
    """Signals are held while the earlier run is put back: a Ctrl-C then arrives after it, and the line that reports
    the stop says what the directory holds."""
    path = str(tmp_path / "run")
    proc = subprocess.run(
        [sys.executable, "-c", STOP_DURING_RESTORE, path], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.stdout.strip() == (
        f"True True the new run completed no epoch, so {path} holds the earlier run again, as it was"
    ), proc.stdout + proc.stderr


HELD = """
import os, signal, time
from bkd.utils.stops import held
try:
    with held():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # (it would have been raised here)
        print("held", flush=True)
except KeyboardInterrupt:
    print("after", flush=True)
with held(drop=True):  # the process is stopping already: a signal meanwhile changes nothing
    os.kill(os.getpid(), signal.SIGINT)
time.sleep(0.05)
print("dropped")
"""


def test_held_signals_come_after_the_block_or_not_at_all():
    proc = subprocess.run([sys.executable, "-c", HELD], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.stdout.split() == ["held", "after", "dropped"], proc.stdout + proc.stderr


def test_a_new_run_killed_after_its_first_epoch_keeps_it_and_the_earlier_run_goes(tmp_path):
    """Killed between the new run's first resume state and the removal of the earlier run: the new run completed an
    epoch, so the next command keeps it (the earlier run is removed, as it would have been)."""
    path = str(tmp_path / "run")
    _earlier_run(path)
    run = _new_run_started_aside(path)
    with open(run.file(rd.STATE), "wb") as fh:
        fh.write(b"new state")
    _died(run)
    again = rd.RunDir(path).open(resume=True)
    again.close()
    assert open(os.path.join(path, rd.STATE), "rb").read() == b"new state"
    assert not os.path.exists(os.path.join(path, rd.PREVIOUS)) and "removed, as it would have been" in again.notices[0]


@pytest.mark.slow
def test_two_ctrl_cs_in_an_overwritten_runs_first_epoch_put_the_earlier_run_back_and_say_so(
    finished_run, synthetic_root, tmp_path
):
    run_dir = _copy_run(finished_run, tmp_path)
    before = digests(run_dir)
    flags = tiny_flags(synthetic_root, str(tmp_path), run_dir=run_dir, n_epoch=3, print_freq=1, overwrite=True)
    proc = subprocess.Popen(
        [sys.executable, script(TRAIN), *flags], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    _read_until(proc, "epoch:   0/  2\titer:   2/")
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().endswith(f"the new run completed no epoch, so {run_dir} holds the earlier run again, as it was")
    assert digests(run_dir) == before


# 5. files that are not regular files ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "fifo, command",
    [
        (rd.METRICS, "learning"),
        (rd.METRICS, "status"),
        (rd.DETECTION, "detection"),
        (rd.TEACHER, "learning"),
        ("learning.log", "status"),
        (rd.STATE, "resume"),
    ],
)
def test_no_command_blocks_on_a_file_that_is_not_a_regular_file(finished_run, synthetic_root, tmp_path, fifo, command):
    run_dir = _copy_run(finished_run, tmp_path)
    if os.path.exists(os.path.join(run_dir, fifo)):
        os.remove(os.path.join(run_dir, fifo))
    os.mkfifo(os.path.join(run_dir, fifo))
    if command == "status":
        results = os.path.dirname(run_dir)
        os.rename(run_dir, os.path.join(results, "cifar10_worst_seed_0"))
        proc = launch("status", "--noise_types", "worst", "--results_dir", results, timeout=60)
        assert proc.returncode == 0 and "cifar10_worst_seed_0" in proc.stdout, proc.stdout + proc.stderr
        return
    argv = {
        "learning": ("learning.py", _learning_argv(synthetic_root, run_dir)),
        "detection": ("detection.py", _detection_argv(synthetic_root, run_dir)),
        "resume": (TRAIN, tiny_flags(synthetic_root, str(tmp_path), run_dir=run_dir, n_epoch=2, resume=True)),
    }[command]
    proc = run(*argv[:1], *argv[1], check=False, timeout=60)  # (blocked, it would time out)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert f"{fifo}: a named pipe (FIFO), not a regular file; put the file itself there" in proc.stderr, proc.stderr


# 6. standard output closed --------------------------------------------------------------------------------------------
def test_a_refused_flag_pair_with_standard_output_closed_is_one_line():
    proc = subprocess.run(
        ["bash", "-c", f'exec "{sys.executable}" "{script(TRAIN)}" --resume --overwrite >&-'],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.splitlines() == [
        "error: --resume and --overwrite contradict each other; pick one"
    ], proc.stderr


# 7-9. the Python API: streams, arguments, process-wide state -------------------------------------------------------
API_WITHOUT_STREAMS = """
import sys
import numpy as np
sys.stderr = None  # a service's process, or pythonw's
from bkd import find_label_issues
rng = np.random.RandomState(0)
images, labels = rng.randint(0, 255, (40, 32, 32, 3)).astype(np.uint8), np.arange(40) % 4
result = find_label_issues(images, labels, device="cpu", n_epoch=1, width=2, batch_size=16, eval_batch_size=40)
sys.stdout.write(str(sorted(result.ranked.tolist()) == list(range(40))))
"""


def test_the_api_runs_without_a_standard_error():
    proc = subprocess.run(
        [sys.executable, "-c", API_WITHOUT_STREAMS],
        env=dict(os.environ, PYTHONPATH=ROOT),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and proc.stdout == "True", proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "argument, value, says",
    [
        ("n_epoch", "2", "--n_epoch '2' must be a whole number, not str"),
        ("width", 4.0, "--width 4.0 must be a whole number, not float"),
        ("lr", "0.02", "--lr '0.02' must be a number, not str"),
        ("seed", 1.5, "--seed 1.5 must be a whole number, not float"),
        ("n_epoch", True, "--n_epoch True must be a whole number, not bool"),
        ("amp", "no", "--amp 'no' must be True or False, not str"),
        ("verbose", "yes", "verbose='yes' must be True or False, not str"),
    ],
)
def test_an_api_argument_of_the_wrong_type_is_one_line_naming_it(argument, value, says):
    from bkd import find_label_issues
    from bkd.utils.errors import UsageError

    images, labels = np.zeros((8, 32, 32, 3), np.uint8), np.arange(8) % 2
    with pytest.raises(UsageError) as err:
        find_label_issues(images, labels, device="cpu", **{argument: value})
    assert str(err.value) == says


def test_the_api_takes_numpy_numbers_and_leaves_no_thread_hook_behind(tmp_path):
    from bkd import find_label_issues

    rng = np.random.RandomState(0)
    images, labels = rng.randint(0, 255, (40, 32, 32, 3)).astype(np.uint8), np.arange(40) % 4
    hook = threading.excepthook
    for call in range(2):  # (each call used to wrap the hook again)
        result = find_label_issues(
            images,
            labels,
            device="cpu",
            run_dir=str(tmp_path / f"run{call}"),
            n_epoch=np.int64(1),
            width=np.int32(2),
            lr=np.float32(0.02),
            batch_size=16,
            eval_batch_size=40,
        )
        assert threading.excepthook is hook
    assert sorted(result.ranked.tolist()) == list(range(40))
    recorded = json.load(open(tmp_path / "run1" / rd.METRICS))["config"]
    assert (recorded["n_epoch"], recorded["width"], type(recorded["lr"])) == (1, 2, float)


# 10-12. lines that say the truth --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_evaluating_a_custom_run_as_cifar_says_it_was_trained_on_other_data(tmp_path):
    from tests.synthetic import write_custom

    data, _, _ = write_custom(str(tmp_path / "data"), n_train=60, n_test=20)
    tiny = ["--n_epoch", "1", "--width", "2", "--batch_size", "16", "--device", "cpu"]
    run(TRAIN, "--dataset", "custom", "--data_file", data, "--run_dir", tmp_path / "run", *tiny)
    proc = run(
        "learning.py",
        "--dataset",
        "cifar10",
        "--run_dir",
        tmp_path / "run",
        "--data_root",
        tmp_path / "no_cifar_here",
        "--no_download",
        check=False,
    )
    assert proc.returncode == 3 and "images not found" not in proc.stderr, proc.stderr
    assert f"the run in {tmp_path / 'run'} was trained with --dataset custom" in proc.stderr, proc.stderr


def test_run_sh_on_cuda_where_there_is_none_creates_nothing(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here: --device cuda is no mistake")
    env = dict(os.environ, DEVICE="cuda", RESULTS_DIR=str(tmp_path / "results"), NOISE_TYPES="worst")
    proc = subprocess.run(
        ["bash", script("run.sh"), "--quick"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--device cuda: CUDA is not available on this machine; use --device cpu or auto" in proc.stderr
    assert not os.path.exists(tmp_path / "results")


@pytest.mark.slow
def test_the_last_line_names_an_absolute_run_dir_as_given_from_another_folder(synthetic_root, tmp_path):
    elsewhere, run_dir = tmp_path / "elsewhere", str(tmp_path / "runs" / "mine")
    elsewhere.mkdir()
    out = run(TRAIN, *tiny_flags(synthetic_root, str(tmp_path), run_dir=run_dir, n_epoch=1), cwd=elsewhere).stdout
    assert out.rstrip().splitlines()[-1].endswith(f"outputs in {run_dir}") and "../" not in out, out


def test_a_path_in_a_message_is_one_the_reader_can_use_where_they_stand(tmp_path, monkeypatch):
    from bkd.utils.files import shown

    monkeypatch.chdir(tmp_path)
    assert shown("results/run") == "results/run" and shown(str(tmp_path / "a")) == "a"
    assert shown("/elsewhere/run") == "/elsewhere/run" and shown("../x") == os.path.join(os.path.dirname(tmp_path), "x")
