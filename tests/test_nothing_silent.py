"""Nothing silently wrong: evaluations check what they evaluate, images are read as they are, every failure is one
true line (and creates nothing), and no message gives false or unsafe advice."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from tests.cli import data_flags, launch, run, script, tiny_flags, tmpfs
from tests.synthetic import flip_labels, make_images

TRAIN = "blind_knowledge_dist_training.py"
QUICK = dict(n_epoch=2, noisy_val_freq=1)


def _one_line(proc, code):
    assert proc.returncode == code, proc.stdout[-2000:] + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


# 1. the evaluations check the data they evaluate --------------------------------------------------------------------
@pytest.fixture(scope="module")
def aggre_run(synthetic_root, tmp_path_factory):
    results = str(tmp_path_factory.mktemp("aggre"))
    run(TRAIN, *tiny_flags(synthetic_root, results, noise_type="aggre", **QUICK), cwd=results)
    return results, os.path.join(results, "cifar10_aggre_seed_0")


def _unchanged(path):
    return open(path, "rb").read()


@pytest.mark.slow
def test_detection_refuses_another_label_set_than_the_runs(aggre_run, synthetic_root):
    results, run_dir = aggre_run
    before = _unchanged(os.path.join(run_dir, "metrics.json"))
    proc = run("detection.py", "--noise_type", "worst", "--run_dir", run_dir, *data_flags(synthetic_root), check=False)
    line = _one_line(proc, 3)
    assert f"--noise_type worst: the run in {run_dir} was trained with --noise_type aggre" in line
    assert _unchanged(os.path.join(run_dir, "metrics.json")) == before


@pytest.mark.slow
def test_evaluations_refuse_other_labels_of_the_same_images(aggre_run, synthetic_root, tmp_path):
    _, run_dir = aggre_run
    from bkd.data.labels import safe_load

    labels = safe_load(os.path.join(synthetic_root, "CIFAR-10_human.pt"))
    other = dict(labels, aggre_label=np.roll(labels["aggre_label"], 1))
    other["clean_label"] = labels["clean_label"]
    path = str(tmp_path / "CIFAR-10_human.pt")
    torch.save(other, path)
    before = _unchanged(os.path.join(run_dir, "metrics.json"))
    for script_name in ("learning.py", "detection.py"):
        proc = run(
            script_name,
            "--noise_type",
            "aggre",
            "--run_dir",
            run_dir,
            "--data_root",
            synthetic_root,
            "--noise_path",
            path,
            "--no_download",
            "--device",
            "cpu",
            check=False,
        )
        line = _one_line(proc, 3)
        assert f"the training labels (label file or --noise_path) differ from those of the run in {run_dir}" in line
        assert line.endswith(
            "evaluate it with the data and flags it was trained with (--data_root, --noise_path, "
            "--data_file, --subset, --seed)"
        )
    assert _unchanged(os.path.join(run_dir, "metrics.json")) == before


@pytest.mark.slow
def test_learning_refuses_another_data_file_of_the_same_shape(tmp_path):
    rng = np.random.RandomState(0)
    x, y = make_images(120, 3, rng)
    xt, yt = make_images(40, 3, rng)
    mine = _npz(tmp_path / "mine.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    results = str(tmp_path / "results")
    flags = ["--dataset", "custom", "--results_dir", results, "--device", "cpu"]
    run(TRAIN, *flags, "--data_file", mine, "--n_epoch", "1", "--width", "4", "--batch_size", "32", cwd=str(tmp_path))
    run_dir = os.path.join(results, "custom_mine_seed_0")
    before = _unchanged(os.path.join(run_dir, "metrics.json"))
    other = _npz(tmp_path / "other.npz", x_train=x[::-1].copy(), y_train=y[::-1].copy(), x_test=xt, y_test=yt)
    proc = run("learning.py", *flags, "--data_file", other, "--run_dir", run_dir, check=False)
    assert "the training images differ from those of the run in" in _one_line(proc, 3)
    test_swapped = _npz(tmp_path / "test.npz", x_train=x, y_train=y, x_test=xt[::-1].copy(), y_test=yt)
    proc = run("learning.py", *flags, "--data_file", test_swapped, "--run_dir", run_dir, check=False)
    assert "the test set differ from those of the run in" in _one_line(proc, 3)
    assert _unchanged(os.path.join(run_dir, "metrics.json")) == before


# 2. and 3. image folders: images by their real range, hidden entries skipped ----------------------------------------
def _folder(tmp_path):
    from PIL import Image

    root = tmp_path / "pets"
    rng = np.random.RandomState(0)
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.randint(0, 255, (32, 32, 3)).astype(np.uint8)).save(root / name / f"{i}.png")
    return root


def test_sixteen_bit_and_float_images_are_read_by_their_range(tmp_path):
    from PIL import Image

    from bkd.data.custom import load_custom
    from bkd.utils.errors import DataError

    root = _folder(tmp_path)
    # 16-bit: 32896 = 128 * 257
    Image.fromarray(np.full((32, 32), 32896, dtype=np.uint16)).save(root / "cat" / "wide.png")
    Image.fromarray(np.full((32, 32), 0.25, dtype=np.float32)).save(root / "dog" / "float.tif")
    data = load_custom(str(root))
    ids = list(data.ids)
    assert (data.x_train[ids.index(os.path.join("cat", "wide.png"))] == 128).all()  # was 255: clipped to white
    assert (data.x_train[ids.index(os.path.join("dog", "float.tif"))] == 64).all()  # was 0: black
    Image.fromarray(np.full((32, 32), 7.5e5, dtype=np.float32)).save(root / "dog" / "huge.tif")
    with pytest.raises(
        DataError,
        match=r"huge.tif: a F image with values in 750000..750000, outside the 16-bit or 0..1 "
        r"range it would be read by; convert it to an 8-bit image$",
    ):
        load_custom(str(root))


def test_hidden_files_and_folders_are_skipped_and_counted(tmp_path):
    from PIL import Image

    from bkd.data.custom import load_custom
    from bkd.data.datasets import custom_source

    root = _folder(tmp_path)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "cat" / ".thumb.png")
    (root / "dog" / "._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS metadata: not an image at all
    (root / ".ipynb_checkpoints").mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / ".ipynb_checkpoints" / "x.png")
    (root / "cat" / ".cache").mkdir()
    data = load_custom(str(root))
    assert data.classes == ["cat", "dog"] and len(data.y_train) == 6
    assert not [i for i in data.ids if os.path.basename(i).startswith(".")]
    banner = custom_source(data).banner[0]
    assert banner.endswith("skipped 2 hidden file(s) and 2 hidden folder(s) (names starting with '.')")


# 4. images too small for the network ---------------------------------------------------------------------------------
def test_small_images_are_resized_to_32_unless_kept(tmp_path):
    from bkd.data.custom import from_arrays, load_custom
    from bkd.data.datasets import custom_source

    x, y = make_images(40, 2, np.random.RandomState(0))
    small = np.stack([img[::4, ::4] for img in x])  # 8x8
    path = _npz(tmp_path / "digits.npz", x_train=small, y_train=y, x_test=small[:5], y_test=y[:5])
    data = load_custom(path)
    assert data.x_train.shape[1:] == (32, 32, 3) and data.x_test.shape[1:] == (32, 32, 3) and data.resized_from == 8
    assert "the images are 8x8: resized to 32x32 (bilinear)" in custom_source(data).banner[1]
    kept = load_custom(path, keep_size=True)
    assert kept.x_train.shape[1:] == (8, 8, 3)
    assert (
        "trained at 8x8 (--keep_image_size): PreResNet18's three stride-2 stages leave 1x1 maps"
        in custom_source(kept).banner[1]
    )
    assert from_arrays(small, y).x_train.shape[1] == 32 and from_arrays(small, y, keep_size=True).x_train.shape[1] == 8


# 5. a split's files together or not at all ----------------------------------------------------------------------------
def test_a_failed_split_leaves_none_of_its_files(tmp_path, monkeypatch):
    from bkd import find_label_issues, outputs
    from bkd.utils.errors import RunDirError

    def full_disk(path, *args):
        raise RunDirError(f"cannot write {path} (No space left on device); nothing was written")

    monkeypatch.setattr(outputs, "write_label_issues", full_disk)
    x, y = make_images(80, 4, np.random.RandomState(0))
    run_dir = tmp_path / "run"
    with pytest.raises(RunDirError, match="No space left"):
        find_label_issues(
            x, y, device="cpu", run_dir=str(run_dir), n_epoch=2, width=2, batch_size=32, eval_batch_size=64
        )
    assert not [
        n for n in ("detection.npy", "agreement.npy", "pred_probs.npy", "label_issues.csv") if (run_dir / n).exists()
    ]


def test_detection_refuses_split_files_that_metrics_json_does_not_record(aggre_run, synthetic_root, tmp_path):
    _, run_dir = aggre_run
    copy = str(tmp_path / "run")
    shutil.copytree(run_dir, copy)
    path = os.path.join(copy, "metrics.json")
    metrics = json.load(open(path))
    # as if killed between the split's files and the epoch's
    json.dump(dict(metrics, split_epoch=None), open(path, "w"))
    proc = run("detection.py", "--noise_type", "aggre", "--run_dir", copy, *data_flags(synthetic_root), check=False)
    assert (
        "metrics.json records no split, so detection.npy, agreement.npy, pred_probs.npy, label_issues.csv, "
        "review.html cannot be trusted" in _one_line(proc, 3)
    )


# 6. unfinished runs ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_evaluations_say_a_run_is_unfinished_instead_of_scoring_its_first_epoch(synthetic_root, tmp_path):
    flags = tiny_flags(synthetic_root, str(tmp_path), n_epoch=4)
    proc = subprocess.Popen(
        [sys.executable, script(TRAIN), *flags],
        cwd=str(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in proc.stdout:
        if line.startswith("epoch 1"):
            proc.kill()
            break
    proc.wait()
    run_dir = os.path.join(tmp_path, "cifar10_worst_seed_0")
    for script_name in ("learning.py", "detection.py"):
        out = run(
            script_name,
            "--run_dir",
            run_dir,
            "--noise_type",
            "worst",
            *data_flags(synthetic_root),
            "--no_download",
            check=False,
        )
        assert (
            f"{run_dir} holds an unfinished run (epochs 0..0 of 0..3 completed): finish it with its training command "
            "and --resume, then run this again"
        ) in _one_line(out, 4)


def test_evaluations_put_back_the_run_an_interrupted_overwrite_replaced(aggre_run, synthetic_root, tmp_path):
    _, run_dir = aggre_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    previous = copy / ".previous"
    previous.mkdir()
    for name in os.listdir(copy):  # --overwrite moved the finished run aside, then was killed in its first epoch
        if not name.startswith("."):
            os.replace(copy / name, previous / name)
    (copy / ".incomplete").write_text("")
    out = run(
        "learning.py",
        "--run_dir",
        copy,
        "--noise_type",
        "aggre",
        *data_flags(synthetic_root),
        "--no_download",
        "--device",
        "cpu",
    ).stdout
    assert (
        "[bkd] an earlier --overwrite stopped before the new run completed an epoch; the run it replaced is back" in out
    )
    assert "Best test acc selected by val is" in out and not previous.exists()


# 7. the API with a subset says which images it ranked -----------------------------------------------------------------
def test_api_with_a_subset_returns_the_positions_it_used(tmp_path):
    from bkd import find_label_issues

    rng = np.random.RandomState(0)
    x, clean = make_images(200, 4, rng)
    y = flip_labels(clean, 0.2, 4, rng)
    r = find_label_issues(x, y, device="cpu", subset=120, n_epoch=2, width=2, batch_size=32, eval_batch_size=64)
    assert len(r.positions) == len(r.label_quality) == len(r.group) == 120
    assert np.all(np.diff(r.positions) > 0) and r.positions.max() < 200 and len(set(r.positions) - set(range(200))) == 0
    assert sorted(r.ranked.tolist()) == r.positions.tolist()  # the caller's indices, most suspect first
    assert r.ranked[0] == r.positions[np.argmin(r.label_quality)]
    assert np.array_equal(r.suggested_label, r.pred_probs.argmax(axis=1))


@pytest.mark.slow
def test_label_issues_csv_names_positions_in_the_data_with_a_subset(tmp_path):
    from bkd.issues import read_label_issues

    x, y = make_images(200, 4, np.random.RandomState(0))
    path = _npz(tmp_path / "mine.npz", x_train=x, y_train=y, ids=np.array([f"img{i}" for i in range(200)]))
    run(
        TRAIN,
        "--dataset",
        "custom",
        "--data_file",
        path,
        "--results_dir",
        tmp_path,
        "--device",
        "cpu",
        "--subset",
        "120",
        "--n_epoch",
        "1",
        "--width",
        "2",
        "--batch_size",
        "32",
        cwd=str(tmp_path),
    )
    run_dir = tmp_path / "custom_mine_seed_0"
    rows = read_label_issues(str(run_dir / "label_issues.csv"))
    subset = np.load(run_dir / "train_subset.npy")
    assert sorted(r["position"] for r in rows) == subset.tolist()  # indices into x_train, as README says
    assert all(r["id"] == f"img{r['position']}" for r in rows)


# 8. the launcher on a grid trained with other flags -----------------------------------------------------------------
@pytest.mark.slow
def test_relaunching_a_finished_grid_with_other_flags_says_so_and_overwrite_retrains(synthetic_root, tmp_path):
    results = str(tmp_path)
    grid = [
        "run",
        "--seeds",
        "0",
        "--noise_types",
        "aggre",
        "--results_dir",
        results,
        "--cpu",
        "--threads",
        "1",
        "--width",
        "4",
        "--batch_size",
        "32",
        "--device",
        "cpu",
        "--no_download",
        *data_flags(synthetic_root),
    ]
    launch(*grid, "--n_epoch", "2", check_code=0)
    metrics = os.path.join(results, "cifar10_aggre_seed_0", "metrics.json")
    before = _unchanged(metrics)
    again = launch(*grid, "--n_epoch", "3", check_code=0).stdout
    assert (
        "== cifar10_aggre_seed_0: already finished, trained with other flags (--n_epoch 2 where this launch asks 3); "
        "kept as it is: add --overwrite to train it again with this launch's flags"
    ) in again
    assert "1 finished run(s) were trained with other flags and kept as they are (cifar10_aggre_seed_0)" in again
    assert _unchanged(metrics) == before
    assert "already finished; skipped" in launch(*grid, "--n_epoch", "2", check_code=0).stdout  # the same flags
    launch(*grid, "--n_epoch", "3", "--overwrite", check_code=0)
    assert json.load(open(metrics))["epochs_completed"] == 3


def test_launcher_refuses_bad_flags_in_one_line_creating_nothing(tmp_path):
    for flags, message in (
        (["--parallel", "x"], "error: argument --parallel: invalid int value: 'x'"),
        (["--n_epochs", "2"], "error: unrecognized arguments: --n_epochs 2"),
        (["--batch_size", "1"], "error: --batch_size 1: BatchNorm cannot train on batches of one image"),
    ):
        proc = launch("run", "--results_dir", str(tmp_path / "results"), "--cpu", *flags)
        assert message in _one_line(proc, 2)
    assert not (tmp_path / "results").exists()


# tracebacks where one line is promised --------------------------------------------------------------------------------
def test_a_failed_torch_save_is_one_line_keeping_the_earlier_file(tmp_path, monkeypatch):
    from bkd.utils.errors import RunDirError
    from bkd.utils.files import save_torch

    path = str(tmp_path / "state.pth.tar")
    save_torch({"epoch": 1}, path)

    def full(obj, f):
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0\nsecond line")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(
        RunDirError,
        match=r"cannot write .*state.pth.tar \(torch.save could not write it: \[enforce fail at "
        r"inline_container.cc:626\] . unexpected pos 64 vs 0; .* bytes free there\); "
        r"the earlier file is kept",
    ):
        save_torch({"epoch": 2}, path)
    assert torch.load(path, weights_only=True) == {"epoch": 1} and os.listdir(tmp_path) == ["state.pth.tar"]


def test_a_full_disk_while_saving_a_state_is_one_line(tmp_path):
    from bkd.utils.errors import RunDirError
    from bkd.utils.files import save_torch

    with tmpfs(tmp_path / "small", "256k", "to fill a disk") as mount:
        save_torch({"epoch": 1}, str(mount / "state.pth.tar"))
        with pytest.raises(RunDirError, match=r"state.pth.tar .*the earlier file is kept"):
            save_torch({"weights": torch.zeros(1_000_000)}, str(mount / "state.pth.tar"))
        assert torch.load(mount / "state.pth.tar", weights_only=True) == {"epoch": 1}
        assert os.listdir(mount) == ["state.pth.tar"]


def test_the_api_checks_values_as_the_command_line_does():
    from bkd import find_label_issues
    from bkd.utils.errors import UsageError

    x, y = make_images(20, 2, np.random.RandomState(0))
    for flags, message in (
        (dict(seed=-1), r"^--seed -1 must be in 0..2\*\*32-1"),
        (dict(val_ratio=1.0), r"^--val_ratio 1.0"),
        (dict(subset=-3), r"^--subset -3 must be 0 or positive"),
        (dict(batch_size=1), r"^--batch_size 1"),
    ):
        with pytest.raises(UsageError, match=message):
            find_label_issues(x, y, device="cpu", **flags)


def test_ctrl_c_while_starting_is_one_line(synthetic_root, tmp_path):
    proc = subprocess.Popen(
        [sys.executable, script(TRAIN), *tiny_flags(synthetic_root, str(tmp_path))],
        cwd=str(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.3)  # importing torch
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not os.path.exists(tmp_path / "cifar10_worst_seed_0") or "holds no result" in err or "no epoch" in err, err


def test_a_closed_standard_output_stops_quietly_saying_what_the_run_holds(synthetic_root, tmp_path):
    proc = subprocess.Popen(
        [sys.executable, script(TRAIN), *tiny_flags(synthetic_root, str(tmp_path))],
        cwd=str(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    head = [proc.stdout.readline() for _ in range(2)]  # `| head -2`
    proc.stdout.close()
    err = proc.stderr.read()
    proc.wait(timeout=120)
    assert head[0] == "Current device is cpu\n"
    assert proc.returncode == 141 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith(
        "error: standard output was closed (the pipe's reader ended), so the run stopped as a Unix tool does; "
    )


def test_a_batch_size_of_one_is_refused_in_one_line(synthetic_root, tmp_path):
    proc = run(TRAIN, *tiny_flags(synthetic_root, str(tmp_path), batch_size=1), check=False)
    assert "--batch_size 1: BatchNorm cannot train on batches of one image; give 2 or more" in _one_line(proc, 2)


# messages that were false or unsafe ---------------------------------------------------------------------------------
def test_npz_problems_are_named_without_unsafe_advice(tmp_path):
    from bkd.data.custom import load_custom
    from bkd.utils.errors import DataError

    x, y = make_images(20, 2, np.random.RandomState(0))
    objects = str(tmp_path / "objects.npz")
    np.savez(objects, x_train=x, y_train=y, classes=np.array([{"name": "a"}, {"name": "b"}], dtype=object))
    csv = tmp_path / "labels.csv"
    csv.write_text("file,label\na.png,0\n")
    np.save(tmp_path / "single.npy", x)
    for path, message in (
        (objects, "array 'classes' holds Python objects, not numbers or text"),
        (str(csv), "not an .npz archive (a text or CSV file?)"),
        (str(tmp_path / "single.npy"), "a single .npy array, not an .npz archive"),
    ):
        with pytest.raises(DataError) as err:
            load_custom(path)
        assert message in str(err.value)
        assert not any(word in str(err.value) for word in ("allow_pickle", "pickled", "weights_only"))


@pytest.mark.slow
def test_overfitting_epoch_advice_names_epochs_that_exist(synthetic_root, tmp_path):
    short = run(TRAIN, *tiny_flags(synthetic_root, str(tmp_path), n_epoch=3, overfitting_epoch=100), check=False)
    line = _one_line(short, 2)
    assert "outside the run's epochs 0..2; it needs --n_epoch 6 or more" in line and "-2" not in line
    longer = run(TRAIN, *tiny_flags(synthetic_root, str(tmp_path), n_epoch=10, overfitting_epoch=100), check=False)
    assert "give an epoch in 0..7, or more --n_epoch" in _one_line(longer, 2)


def test_labels_with_a_gap_are_asked_to_be_renumbered():
    from bkd.data.custom import from_arrays
    from bkd.utils.errors import DataError

    x, _ = make_images(30, 3, np.random.RandomState(0))
    with pytest.raises(
        DataError,
        match=r"labels must be 0..C-1 with an image for each, but no image has label 2 \(of 0..3\); "
        r"renumber them",
    ):
        from_arrays(x, np.array([0, 1, 3] * 10))


@pytest.mark.slow
def test_a_refused_start_creates_nothing(synthetic_root, tmp_path):
    results = tmp_path / "results"
    missing = tiny_flags(synthetic_root, str(results), noise_path=str(tmp_path / "none.pt"))  # refused after the lock
    assert "none.pt" in _one_line(run(TRAIN, *missing, check=False), 3)
    assert not (results / "cifar10_worst_seed_0").exists()
    resumed = run(TRAIN, *tiny_flags(synthetic_root, str(results), resume=True), check=False)
    assert "nothing to resume in" in _one_line(resumed, 4) and not (results / "cifar10_worst_seed_0").exists()


@pytest.mark.slow
def test_custom_runs_are_announced_by_their_data_file(tmp_path):
    x, y = make_images(60, 2, np.random.RandomState(0))
    path = _npz(tmp_path / "pets.npz", x_train=x, y_train=y)
    out = run(
        TRAIN,
        "--dataset",
        "custom",
        "--data_file",
        path,
        "--results_dir",
        tmp_path,
        "--device",
        "cpu",
        "--n_epoch",
        "1",
        "--width",
        "2",
        "--batch_size",
        "32",
        cwd=str(tmp_path),
    ).stdout
    assert "[bkd] custom data" in out and "pets.npz (its given labels), seed 0:" in out and "custom clean" not in out
