"""Issue-by-issue edges where a user could lose a result or be told something untrue (docs/reliability.md)."""
import fcntl
import json
import os
import subprocess
import sys

import pytest

import detection
import learning
from tests.cli import ROOT, script
from tests.test_bad_input import _copy_run, _detection_argv, _learning_argv, call, finished_run  # noqa: F401 (fixture)


# 1. evaluations of one run at once ------------------------------------------------------------------------------------
def test_two_evaluations_started_together_both_keep_their_results(finished_run, synthetic_root, tmp_path):
    run_dir = _copy_run(finished_run, tmp_path)
    procs = [subprocess.Popen([sys.executable, script(name), *argv], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for name, argv in (("learning.py", _learning_argv(synthetic_root, run_dir)),
                                ("detection.py", _detection_argv(synthetic_root, run_dir)))]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    metrics = json.load(open(os.path.join(run_dir, "metrics.json")))
    assert metrics["learning"]["best_test_acc"] is not None and metrics["detection"]["f1"] is not None


def test_an_evaluation_runs_beside_another_and_leaves_its_half_written_file(finished_run, synthetic_root, tmp_path, capsys):
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
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from utils.files import update_json\n"
            "for i in range(40): update_json(sys.argv[2], {f'{sys.argv[3]}_{i}': i})")
    procs = [subprocess.Popen([sys.executable, "-c", code, ROOT, path, name]) for name in ("a", "b", "c")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    assert len(json.load(open(path))) == 3 * 40


# 2. a finished run without the files the evaluations never read ------------------------------------------------------
@pytest.mark.parametrize("module", [learning, detection])
def test_a_finished_run_without_its_resume_state_is_evaluated(module, finished_run, synthetic_root, tmp_path, capsys):
    run_dir = _copy_run(finished_run, tmp_path)
    os.remove(os.path.join(run_dir, "state.pth.tar"))
    argv = (_learning_argv if module is learning else _detection_argv)(synthetic_root, run_dir)
    code, err = call(module, argv, capsys)
    assert code == 0, err


@pytest.mark.parametrize("module", [learning, detection])
def test_a_run_without_metrics_json_names_exactly_that_file(module, finished_run, synthetic_root, tmp_path, capsys):
    run_dir = _copy_run(finished_run, tmp_path)
    os.remove(os.path.join(run_dir, "metrics.json"))
    argv = (_learning_argv if module is learning else _detection_argv)(synthetic_root, run_dir)
    code, err = call(module, argv, capsys)
    assert code == 3 and "metrics.json is missing" in err and "completed no epoch" not in err, err
    assert len(err.strip().splitlines()) == 1


# 3. names in any encoding ----------------------------------------------------------------------------------------------
def test_image_folder_names_that_are_not_utf8_train_to_the_end_and_are_written_exactly(tmp_path):
    from bkd.issues import read_label_issues
    from tests.synthetic import write_custom

    path, _, _ = write_custom(str(tmp_path / "data"), n_train=60, folder=True)
    folder = os.fsencode(path)
    first = sorted(os.listdir(os.path.join(folder, b"red bar")))[0]
    os.rename(os.path.join(folder, b"red bar", first), os.path.join(folder, b"red bar", b"caf\xe9.png"))  # Latin-1
    os.rename(os.path.join(folder, b"red bar"), os.path.join(folder, b"Kl\xe4sse"))
    results = str(tmp_path / "results")
    proc = subprocess.run([sys.executable, script("blind_knowledge_dist_training.py"), "--dataset", "custom", "--data_file",
                           path, "--n_epoch", "2", "--width", "4", "--batch_size", "16", "--device", "cpu", "--results_dir",
                           results], cwd=str(tmp_path), capture_output=True, timeout=300)  # (bytes: the log names them too)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    issues = os.path.join(results, "custom_images_seed_0", "label_issues.csv")
    raw = open(issues, "rb").read()
    assert b"Kl\xe4sse/caf\xe9.png" in raw and b",Kl\xe4sse," in raw  # the names as the file system holds them
    rows = read_label_issues(issues)
    named = {row["id"] for row in rows}
    assert os.path.join(os.fsdecode(b"Kl\xe4sse"), os.fsdecode(b"caf\xe9.png")) in named
    assert all(os.path.exists(os.path.join(path, name)) for name in named)  # each row names its file exactly


def test_a_name_that_cannot_be_written_is_one_line_and_keeps_the_earlier_file(tmp_path):
    from utils.errors import RunDirError
    from utils.files import atomic_path

    path = tmp_path / "table.csv"
    path.write_text("earlier")
    with pytest.raises(RunDirError, match="table.csv .*the earlier file is kept; rename the files or classes"):
        with atomic_path(str(path)) as tmp, open(tmp, "w", encoding="utf-8", errors="surrogateescape") as fh:
            fh.write("\ud800")  # a lone surrogate outside the file-system escapes
    assert path.read_text() == "earlier" and os.listdir(tmp_path) == ["table.csv"]


# 4. the launcher tells failures from interruptions ---------------------------------------------------------------------
def test_a_run_that_cannot_start_is_reported_failed_and_the_others_go_on(synthetic_root, tmp_path):
    from tests.cli import GRID_TINY, data_flags, grid_flags, launch

    results = str(tmp_path / "results")
    os.makedirs(results)
    open(os.path.join(results, "cifar10_aggre_seed_0"), "w").close()  # a regular file where the run's folder goes
    proc = launch("run", *grid_flags(results, seeds=(0,)), "--cpu", "--threads", "1", *GRID_TINY, *data_flags(synthetic_root))
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
