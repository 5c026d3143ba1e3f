"""Issue-by-issue edges where a user could lose a result or be told something untrue (docs/reliability.md)."""

import fcntl
import json
import os
import subprocess
import sys

import pytest

import detection
import learning
from tests.cli import ROOT, script, tiny_flags
from tests.test_bad_input import _copy_run, _detection_argv, _learning_argv, call


# 1. evaluations of one run at once ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_evaluations_started_together_both_keep_their_results(finished_run, synthetic_root, tmp_path):
    run_dir = _copy_run(finished_run, tmp_path)
    procs = [
        subprocess.Popen(
            [sys.executable, script(name), *argv], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for name, argv in (
            ("learning.py", _learning_argv(synthetic_root, run_dir)),
            ("detection.py", _detection_argv(synthetic_root, run_dir)),
        )
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    metrics = json.load(open(os.path.join(run_dir, "metrics.json")))
    assert metrics["learning"]["best_test_acc"] is not None and metrics["detection"]["f1"] is not None


def test_an_evaluation_runs_beside_another_and_leaves_its_half_written_file(
    finished_run, synthetic_root, tmp_path, capsys
):
    """Another evaluation holds the run's lock (shared) and is writing metrics.json: this one neither refuses ("still
    training") nor sweeps the other's temporary file."""
    run_dir = _copy_run(finished_run, tmp_path)
    half_written = os.path.join(run_dir, ".metrics.json.abc123.tmp")
    open(half_written, "w").write("{")
    with open(os.path.join(run_dir, ".lock"), "a+") as other:
        fcntl.flock(other, fcntl.LOCK_SH | fcntl.LOCK_NB)
        code, err = call(detection, _detection_argv(synthetic_root, run_dir), capsys)
    assert code == 0, err
    assert os.path.exists(half_written)


def test_metrics_updates_from_processes_at_once_lose_nothing(tmp_path):
    path = str(tmp_path / "metrics.json")
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); from bkd.utils.files import update_json\n"
        "for i in range(40): update_json(sys.argv[2], {f'{sys.argv[3]}_{i}': i})"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, ROOT, path, name]) for name in ("a", "b", "c")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    assert len(json.load(open(path))) == 3 * 40


# 2. a finished run without the files the evaluations never read ------------------------------------------------------
@pytest.mark.parametrize("module", [learning, detection])
@pytest.mark.parametrize(
    "removed, code, says",
    [
        ("state.pth.tar", 0, None),  # a finished run's resume state, to save space
        ("metrics.json", 3, "metrics.json is missing"),
    ],
)
def test_an_evaluation_needs_only_the_files_it_reads(
    module, removed, code, says, finished_run, synthetic_root, tmp_path, capsys
):
    run_dir = _copy_run(finished_run, tmp_path)
    os.remove(os.path.join(run_dir, removed))
    argv = (_learning_argv if module is learning else _detection_argv)(synthetic_root, run_dir)
    got, err = call(module, argv, capsys)
    assert got == code, err
    if says:
        assert says in err and "completed no epoch" not in err and len(err.strip().splitlines()) == 1, err


# 3. names in any encoding ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_image_folder_names_that_are_not_utf8_train_to_the_end_and_are_written_exactly(tmp_path):
    from bkd.issues import read_label_issues
    from tests.synthetic import write_custom

    path, _, _ = write_custom(str(tmp_path / "data"), n_train=60, folder=True)
    folder = os.fsencode(path)
    first = sorted(os.listdir(os.path.join(folder, b"red bar")))[0]
    os.rename(os.path.join(folder, b"red bar", first), os.path.join(folder, b"red bar", b"caf\xe9.png"))  # Latin-1
    os.rename(os.path.join(folder, b"red bar"), os.path.join(folder, b"Kl\xe4sse"))
    results = str(tmp_path / "results")
    data = ["--dataset", "custom", "--data_file", path, "--device", "cpu", "--results_dir", results]
    env = dict(os.environ, PYTHONIOENCODING="utf-8")  # a strict UTF-8 standard output: the names are printed as stored
    proc = subprocess.run(
        [
            sys.executable,
            script("blind_knowledge_dist_training.py"),
            *data,
            "--n_epoch",
            "2",
            "--width",
            "4",
            "--batch_size",
            "16",
        ],
        cwd=str(tmp_path),
        capture_output=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert b"Kl\xe4sse" in proc.stdout  # (the start-up line counts the images of each class by name)
    detection = subprocess.run(
        [sys.executable, script("detection.py"), *data], cwd=str(tmp_path), capture_output=True, timeout=300, env=env
    )
    assert detection.returncode == 0 and b"(Kl\xe4sse): " in detection.stdout, detection.stderr.decode(errors="replace")
    issues = os.path.join(results, "custom_images_seed_0", "label_issues.csv")
    raw = open(issues, "rb").read()
    assert b"Kl\xe4sse/caf\xe9.png" in raw and b",Kl\xe4sse," in raw  # the names as the file system holds them
    rows = read_label_issues(issues)
    named = {row["id"] for row in rows}
    assert os.path.join(os.fsdecode(b"Kl\xe4sse"), os.fsdecode(b"caf\xe9.png")) in named
    assert all(os.path.exists(os.path.join(path, name)) for name in named)  # each row names its file exactly


def test_a_name_that_cannot_be_written_is_one_line_and_keeps_the_earlier_file(tmp_path):
    from bkd.utils.errors import RunDirError
    from bkd.utils.files import atomic_path

    path = tmp_path / "table.csv"
    path.write_text("earlier")
    with pytest.raises(RunDirError, match="table.csv .*the earlier file is kept; rename the files or classes"):
        with atomic_path(str(path)) as tmp, open(tmp, "w", encoding="utf-8", errors="surrogateescape") as fh:
            fh.write("\ud800")  # a lone surrogate outside the file-system escapes
    assert path.read_text() == "earlier" and os.listdir(tmp_path) == ["table.csv"]


# 4. the launcher tells failures from interruptions --------------------------------------------------------------------
@pytest.mark.slow
def test_a_run_that_cannot_start_is_reported_failed_and_the_others_go_on(synthetic_root, tmp_path):
    from tests.cli import GRID_TINY, data_flags, grid_flags, launch

    results = str(tmp_path / "results")
    os.makedirs(results)
    open(os.path.join(results, "cifar10_aggre_seed_0"), "w").close()  # a regular file where the run's folder goes
    proc = launch(
        "run", *grid_flags(results, seeds=(0,)), "--cpu", "--threads", "1", *GRID_TINY, *data_flags(synthetic_root)
    )
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "interrupted" not in proc.stdout
    assert "cifar10_aggre_seed_0: FAILED to start (File exists" in proc.stdout
    assert "1 done, 1 failed of 2 runs" in proc.stdout


def test_launcher_status_and_summary_on_a_damaged_or_read_only_results_folder(synthetic_root, tmp_path):
    from tests.cli import grid_flags, launch, tmpfs

    with tmpfs(tmp_path / "ro", "4m", "to make a read-only results folder") as mount:
        results = str(mount)
        os.makedirs(os.path.join(results, "cifar10_aggre_seed_0"))
        with open(os.path.join(results, "cifar10_aggre_seed_0", "metrics.json"), "w") as fh:
            json.dump([1, 2], fh)  # valid JSON, not an object
        status = launch("status", *grid_flags(results, seeds=(0,)))
        assert status.returncode == 0 and "Traceback" not in status.stderr, status.stderr
        assert "cifar10_aggre_seed_0" in status.stdout
        subprocess.run(["mount", "-o", "remount,ro", results], check=True)
        summary = launch("summary", *grid_flags(results, seeds=(0,)))
        assert summary.returncode == 0 and "Traceback" not in summary.stderr, summary.stderr
        assert "### cifar10: mean ± std over seeds" in summary.stdout
        assert "== summary not written (" in summary.stdout and "Read-only file system" in summary.stdout
        run_ = launch("run", *grid_flags(results, seeds=(0,)), "--cpu", "--n_epoch", "1")
        assert run_.returncode == 4 and "Traceback" not in run_.stderr, run_.stdout + run_.stderr
        assert "FAILED to start (Read-only file system" in run_.stdout and "interrupted" not in run_.stdout


# 5. standard output on a full disk ------------------------------------------------------------------------------------
def test_standard_output_on_a_full_disk_is_one_line_and_says_what_the_run_holds(synthetic_root, tmp_path):
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [
                sys.executable,
                script("blind_knowledge_dist_training.py"),
                *tiny_flags(synthetic_root, str(tmp_path), n_epoch=1),
            ],
            cwd=str(tmp_path),
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 4 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot write standard output (No space left on device)" in lines[0]
    # (the run directory this process made held nothing of the run, so it went: the line says so)
    run_dir = os.path.join(str(tmp_path), "cifar10_worst_seed_0")
    assert f"nothing was written ({run_dir} is not there): run the same command to start again" in lines[0]
    assert not os.path.exists(run_dir)


# 6. an unwritable compile cache ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_an_unwritable_compile_cache_runs_with_another_and_says_so(synthetic_root, tmp_path):
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR="/proc/no_such_folder")
    proc = subprocess.run(
        [
            sys.executable,
            script("blind_knowledge_dist_training.py"),
            *tiny_flags(synthetic_root, str(tmp_path), n_epoch=1),
            "--no_compile",
        ],
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert (
        "[bkd] torch's compile cache cannot be created (No such file or directory: /proc/no_such_folder); this run "
        "caches in" in proc.stdout
    )


def test_no_writable_compile_cache_at_all_is_one_line_naming_the_variable(monkeypatch):
    import tempfile

    from bkd.utils.compile_cache import usable_compile_cache
    from bkd.utils.errors import UsageError

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/proc/no_such_folder")
    monkeypatch.setattr(
        tempfile, "mkdtemp", lambda **kw: (_ for _ in ()).throw(PermissionError(13, "Permission denied"))
    )
    with pytest.raises(UsageError, match="set TORCHINDUCTOR_CACHE_DIR to a writable folder"):
        with usable_compile_cache(print):
            pass
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/proc/no_such_folder"


def test_an_os_error_of_the_run_itself_passes_through_the_compile_cache_check():
    """A closed pipe inside a run (BrokenPipeError is an OSError) stays itself: the check catches only its own error."""
    from bkd.utils.compile_cache import usable_compile_cache

    with pytest.raises(BrokenPipeError):
        with usable_compile_cache(print):
            raise BrokenPipeError(32, "Broken pipe")


# 7. one line each -----------------------------------------------------------------------------------------------------
def test_the_api_refuses_images_of_two_sizes_in_one_line():
    import numpy as np

    from bkd import find_label_issues
    from bkd.utils.errors import DataError

    images = [np.zeros((32, 32, 3), np.uint8), np.zeros((48, 48, 3), np.uint8)] * 10
    with pytest.raises(
        DataError, match=r"^images: a list of images of 2 shapes \(\(32, 32, 3\), \(48, 48, 3\)\); give"
    ):
        find_label_issues(images, [0, 1] * 10)


@pytest.mark.slow
def test_the_api_reuses_a_command_line_run_of_the_same_data_and_flags(tmp_path):
    import numpy as np

    from bkd import find_label_issues
    from tests.synthetic import write_custom

    made, _, _ = write_custom(str(tmp_path), n_train=80)
    arrays = dict(np.load(made))
    path = str(tmp_path / "mine.npz")  # the API takes no test set: the same data is data without one
    np.savez(path, **{k: arrays[k] for k in ("x_train", "y_train", "classes", "ids")})
    results = str(tmp_path / "results")
    flags = dict(n_epoch=2, width=4, batch_size=16)
    proc = subprocess.run(
        [
            sys.executable,
            script("blind_knowledge_dist_training.py"),
            "--dataset",
            "custom",
            "--data_file",
            path,
            "--device",
            "cpu",
            "--results_dir",
            results,
            *[w for k, v in flags.items() for w in (f"--{k}", str(v))],
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    run_dir = os.path.join(results, "custom_mine_seed_0")
    result = find_label_issues(
        arrays["x_train"],
        arrays["y_train"],
        classes=arrays["classes"],
        ids=arrays["ids"],
        device="cpu",
        run_dir=run_dir,
        **flags,
    )
    assert np.array_equal(result.flagged, np.load(os.path.join(run_dir, "detection.npy")))


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--lr", "inf"], "--lr inf must be a finite number"),
        (["--momentum", "nan"], "--momentum nan must be a finite number"),
        (
            ["--dataset", "custom", "--noise_type", "worst"],
            "--noise_type worst picks a CIFAR-N label set; --dataset custom trains on the data's own labels: drop it",
        ),
    ],
)
def test_flag_values_that_cannot_be_meant_are_refused(flags, message, synthetic_root, tmp_path, capsys):
    import blind_knowledge_dist_training as training

    code, err = call(training, tiny_flags(synthetic_root, str(tmp_path)) + flags, capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert os.listdir(tmp_path) == []


def test_metrics_json_is_strict_json_where_a_value_is_undefined(tmp_path):
    import numpy as np

    from bkd.utils.files import save_json

    path = str(tmp_path / "m.json")
    save_json({"val_acc": [[0, float("nan")]], "x": np.float32("inf"), "a": np.array([1.0, np.nan])}, path)
    strict = json.load(open(path), parse_constant=lambda name: pytest.fail(f"{name} in the file"))
    assert strict == {"a": [1.0, None], "val_acc": [[0, None]], "x": None}


@pytest.mark.slow
def test_resuming_a_traced_run_whose_trace_is_truncated_is_one_line(synthetic_root, tmp_path, capsys):
    import blind_knowledge_dist_training as training

    trace = str(tmp_path / "trace.json")
    flags = tiny_flags(synthetic_root, str(tmp_path), n_epoch=2, trace=trace)
    code, err = call(training, flags, capsys)
    assert code == 0, err
    open(trace, "w").write(open(trace).read()[:50])
    code, err = call(training, flags + ["--resume"], capsys)
    assert code == 3 and "trace.json: not readable JSON" in err and len(err.strip().splitlines()) == 1, err


def test_a_run_directory_name_too_long_points_to_run_dir(tmp_path, capsys):
    import blind_knowledge_dist_training as training
    from tests.synthetic import write_custom

    path, _, _ = write_custom(str(tmp_path))
    long_path = str(tmp_path / ("x" * 250 + ".npz"))
    os.rename(path, long_path)
    code, err = call(
        training,
        [
            "--dataset",
            "custom",
            "--data_file",
            long_path,
            "--n_epoch",
            "1",
            "--device",
            "cpu",
            "--results_dir",
            str(tmp_path / "results"),
        ],
        capsys,
    )
    assert code == 4 and "File name too long" in err and "--run_dir names it in fewer characters" in err, err
    assert "--results_dir" not in err.split("File name too long")[1]


def test_learning_refuses_checkpoints_of_another_width(finished_run, synthetic_root, tmp_path, capsys):
    import torch

    from bkd.models import PreResNet18
    from bkd.utils.checkpoint import model_checkpoint

    run_dir = _copy_run(finished_run, tmp_path)
    for name in ("teacher.pth.tar", "student.pth.tar"):
        torch.save(model_checkpoint(PreResNet18(10, 4), 1, 10, 4), os.path.join(run_dir, name))
    before = json.load(open(os.path.join(run_dir, "metrics.json")))
    code, err = call(learning, _learning_argv(synthetic_root, run_dir), capsys)
    assert code == 3 and "holds a network of width 4, and the run was trained at --width 8" in err, err
    assert json.load(open(os.path.join(run_dir, "metrics.json"))) == before


def test_the_apis_refusal_of_a_busy_run_directory_speaks_python(tmp_path):
    import numpy as np

    from bkd import find_label_issues
    from bkd.utils.errors import RunDirError

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with open(run_dir / ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RunDirError, match="give another run_dir$") as refused:
            find_label_issues(
                np.zeros((40, 32, 32, 3), np.uint8),
                np.arange(40) % 4,
                n_epoch=1,
                width=4,
                device="cpu",
                run_dir=str(run_dir),
            )
    assert "--" not in str(refused.value)


# 8. EXIF orientation --------------------------------------------------------------------------------------------------
def test_photos_are_read_upright_as_their_orientation_tag_says(tmp_path):
    import numpy as np
    from PIL import Image

    from bkd.data.custom import _read_image

    pixels = np.zeros((32, 48, 3), np.uint8)
    pixels[:, :8] = 255  # a white band on the left, as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view"
    Image.fromarray(pixels).save(tmp_path / "phone.jpg", exif=exif, quality=100)
    upright = _read_image(str(tmp_path / "phone.jpg"), 32).astype(int)
    assert upright[:4].mean() > 200 and upright[-4:].mean() < 50  # the band is now on top, as a viewer shows it


# 6. a hand-edited metrics.json of the wrong type ---------------------------------------------------------------------
@pytest.mark.parametrize("module", [learning, detection])
def test_a_metrics_json_edited_to_the_wrong_type_is_one_line_naming_it(
    module, finished_run, synthetic_root, tmp_path, capsys
):
    import shutil

    run_dir = str(tmp_path / "cifar10_worst_seed_0")  # where the launcher's Run below looks
    shutil.copytree(finished_run[0], run_dir)
    path = os.path.join(run_dir, "metrics.json")
    metrics = json.load(open(path))
    json.dump(dict(metrics, epochs_completed=str(metrics["epochs_completed"])), open(path, "w"))  # valid JSON, a string
    argv = (_learning_argv if module is learning else _detection_argv)(synthetic_root, run_dir)
    got, err = call(module, argv, capsys)
    assert got == 3 and len(err.strip().splitlines()) == 1, err
    assert f"{path}: epochs_completed '2' and config.n_epoch 2 must be whole numbers" in err
    from launch.grid import Run, status

    run = Run("cifar10", "worst", 0, str(tmp_path))
    assert run.path == run_dir and status(run)["epoch"] is None  # the launcher's status reads it as no progress


# 7. an evaluation stopped by a signal ---------------------------------------------------------------------------------
# learning.py, which sends itself SIGTERM as its test pass starts (as `timeout` or a scheduler would)
SIGTERM_IN_THE_TEST_PASS = """
import os, runpy, signal, sys
import bkd.engine
evaluate = bkd.engine.evaluate
def evaluate_then_stopped(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    return evaluate(*args, **kwargs)
bkd.engine.evaluate = evaluate_then_stopped
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_an_evaluation_stopped_by_sigterm_says_what_it_kept(finished_run, synthetic_root, tmp_path):
    run_dir = _copy_run(finished_run, tmp_path)
    before = open(os.path.join(run_dir, "metrics.json")).read()
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            SIGTERM_IN_THE_TEST_PASS,
            script("learning.py"),
            *_learning_argv(synthetic_root, run_dir),
        ],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: SIGTERM received: learning.py stopped before writing its result "
        f"({run_dir}/metrics.json is as it was); run it again"
    ]
    assert open(os.path.join(run_dir, "metrics.json")).read() == before
