"""Your own data (--dataset custom): both input forms end to end, the ranked label_issues.csv, and bad inputs."""

import os

import numpy as np
import pytest

import blind_knowledge_dist_training as training
from bkd.issues import COLUMNS, read_label_issues
from tests.cli import run
from tests.synthetic import CUSTOM_CLASSES, write_custom

TRAIN = [
    "--n_epoch",
    "8",
    "--width",
    "8",
    "--batch_size",
    "32",
    "--lr_step",
    "6",
    "--noisy_val_freq",
    "2",
    "--clean_test_freq",
    "4",
    "--print_freq",
    "100",
    "--eval_batch_size",
    "256",
    "--device",
    "cpu",
]


def _run_all(data_file, results, extra_detection=()):
    common = ["--dataset", "custom", "--data_file", data_file, "--results_dir", results]
    train = run("blind_knowledge_dist_training.py", *common, *TRAIN, cwd=results).stdout
    learn = run("learning.py", *common, "--device", "cpu", cwd=results).stdout
    detect = run("detection.py", *common, *extra_detection, cwd=results).stdout
    return train, learn, detect


def _check_issues(path, n, flipped, classes):
    rows = read_label_issues(path)
    assert list(rows[0]) == list(COLUMNS)
    assert [r["rank"] for r in rows] == list(range(1, n + 1))
    assert sorted(r["position"] for r in rows) == list(range(n))  # complete: every training image once
    probs = [r["given_prob"] for r in rows]
    assert probs == sorted(probs)  # most suspect (lowest agreed probability of the given label) first
    assert all(
        r["given_name"] == classes[r["given_label"]] and r["agreed_name"] == classes[r["agreed_label"]] for r in rows
    )
    assert all(r["flagged"] == (r["group"] == 4) for r in rows)
    top = [r["position"] for r in rows[: int(flipped.sum())]]
    precision_at_k = flipped[top].mean()
    assert precision_at_k >= 2.5 * flipped.mean(), f"flipped labels not ranked high: precision@k {precision_at_k:.2f}"
    return rows


@pytest.fixture(scope="module")
def npz_run(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("custom_npz"))
    path, clean, flipped = write_custom(root)
    np.save(os.path.join(root, "audit.npy"), np.where(np.arange(len(clean)) % 2 == 0, clean, -1))  # half audited
    results = os.path.join(root, "results")
    os.makedirs(results)
    out = _run_all(path, results, ("--true_labels", os.path.join(root, "audit.npy")))
    return root, results, clean, flipped, out


@pytest.mark.slow
def test_npz_end_to_end_ranks_the_flipped_labels_first(npz_run):
    root, results, clean, flipped, (train, learn, detect) = npz_run
    run_dir = os.path.join(results, "custom_custom_seed_0")
    rows = _check_issues(os.path.join(run_dir, "label_issues.csv"), len(clean), flipped, CUSTOM_CLASSES)
    assert rows[0]["id"].startswith("photo_") and rows[0]["id"] == f"photo_{rows[0]['position']:04d}.jpg"
    flagged = np.load(os.path.join(run_dir, "detection.npy"))
    assert sorted(r["position"] for r in rows if r["flagged"]) == np.flatnonzero(flagged).tolist()
    assert "[bkd] custom data" in train and "300 training images 32x32 of 5 classes" in train
    assert "Best test acc selected by val is" in learn  # the npz has a test set


def test_detection_on_custom_data_reports_shares_and_audited_scores(npz_run):
    root, results, clean, flipped, (_, _, detect) = npz_run
    flagged = np.load(os.path.join(results, "custom_custom_seed_0", "detection.npy"))
    assert f"[bkd] {flagged.sum()} of 300 labels flagged as noisy" in detect
    given = np.load(os.path.join(root, "custom.npz"))["y_train"]
    for c, name in enumerate(CUSTOM_CLASSES):
        k, n = int(flagged[given == c].sum()), int((given == c).sum())
        assert f"[bkd] class {c} ({name}): {k} of {n} flagged" in detect
    audited = np.arange(len(clean)) % 2 == 0
    truth = flipped[audited]
    hits = int((flagged[audited] & truth).sum())
    lines = [line for line in detect.splitlines() if not line.startswith("[bkd] ")]
    assert lines[-5:-3] == [str(int(flagged[audited].sum())), str(int(truth.sum()))]
    assert lines[-3] == f"precision is {hits / flagged[audited].sum()}"
    assert "audited labels (150 of 300)" in detect


@pytest.mark.slow
def test_image_folder_end_to_end(tmp_path):
    path, clean, flipped = write_custom(str(tmp_path), n_train=250, folder=True, size=40)
    results = str(tmp_path / "results")
    os.makedirs(results)
    train, learn, detect = _run_all(path, results)
    run_dir = os.path.join(results, "custom_images_seed_0")
    rows = _check_issues(os.path.join(run_dir, "label_issues.csv"), len(clean), flipped, sorted(CUSTOM_CLASSES))
    assert all(r["id"] == f"{r['given_name']}/{os.path.basename(r['id'])}" for r in rows)  # ids: paths in the folder
    # --image_size 32
    assert "250 training images 32x32 of 5 classes" in train and "no test set: no test accuracy" in train
    assert "[bkd] the data has no test set: no test accuracy" in learn
    assert "epoch: 0\tacc on clean test_data" not in train


@pytest.mark.slow
def test_other_image_sizes_use_global_pooling(tmp_path):
    import torch

    from bkd.models import PreResNet18

    net = PreResNet18(5, 4)
    assert net(torch.zeros(2, 3, 48, 48)).shape == (2, 5) and net(torch.zeros(2, 3, 32, 32)).shape == (2, 5)
    path, _, _ = write_custom(str(tmp_path), n_train=100, folder=True, size=48)
    results = str(tmp_path / "results")
    os.makedirs(results)
    out = run(
        "blind_knowledge_dist_training.py",
        "--dataset",
        "custom",
        "--data_file",
        path,
        "--image_size",
        "48",
        "--results_dir",
        results,
        "--n_epoch",
        "2",
        *TRAIN[2:],
        cwd=results,
    ).stdout
    assert "100 training images 48x48" in out and os.path.exists(
        os.path.join(results, "custom_images_seed_0", "label_issues.csv")
    )


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def _bad_cases(tmp_path):
    rng = np.random.RandomState(0)
    x = rng.randint(0, 255, (20, 32, 32, 3)).astype(np.uint8)
    y = np.arange(20) % 2
    folder_no_classes = tmp_path / "flat"
    folder_no_classes.mkdir()
    (folder_no_classes / "a.png").write_bytes(b"x")
    folder_bad_image = tmp_path / "broken"
    (folder_bad_image / "cat").mkdir(parents=True)
    (folder_bad_image / "dog").mkdir()
    from PIL import Image

    Image.fromarray(x[0]).save(folder_bad_image / "cat" / "ok.png")
    (folder_bad_image / "dog" / "bad.png").write_bytes(b"not a png")
    return [
        (_npz(tmp_path / "dtype.npz", x_train=x.astype(np.float32), y_train=y), "x_train must be uint8 RGB images"),
        (_npz(tmp_path / "shape.npz", x_train=x[..., 0], y_train=y), "x_train must be uint8 RGB images (N, H, W, 3)"),
        (_npz(tmp_path / "square.npz", x_train=x[:, :, :16], y_train=y), "images must be square"),
        (
            _npz(tmp_path / "outside.npz", x_train=x, y_train=np.where(y == 1, 5, 0), classes=np.array(["a", "b"])),
            "label 5 is outside 0..1",
        ),
        (_npz(tmp_path / "one.npz", x_train=x, y_train=np.zeros(20, int)), "1 class(es); detection needs at least two"),
        (
            _npz(tmp_path / "empty.npz", x_train=x, y_train=y * 2, classes=np.array(["a", "b", "c"])),
            "class 1 ('b') has no training image",
        ),
        (
            _npz(tmp_path / "ids.npz", x_train=x, y_train=y, ids=np.array(["a", "b"])),
            "ids has 2 entries for 20 training images",
        ),
        (_npz(tmp_path / "lengths.npz", x_train=x, y_train=y[:5]), "y_train must hold one integer label per image"),
        (_npz(tmp_path / "test.npz", x_train=x, y_train=y, x_test=x), "x_test and y_test come together"),
        (str(folder_no_classes), "no class sub-folders"),
        (str(folder_bad_image), f"{folder_bad_image / 'dog' / 'bad.png'}: unreadable image"),
        (str(tmp_path / "missing.npz"), "no such file or folder"),
        (
            _npz(tmp_path / "huge.npz", x_train=x, y_train=np.where(y == 1, 2**31 - 1, 0)),
            "label 2147483647 implies 2147483648 classes",
        ),
        (_npz(tmp_path / "nothing.npz", x_train=x[:0], y_train=y[:0]), "x_train is empty"),
        (
            _npz(tmp_path / "ids2d.npz", x_train=x, y_train=y, ids=np.full((20, 2), "198")),
            "ids must hold one identifier per image",
        ),
    ]


def test_bad_custom_data_gets_one_line_errors(tmp_path, capsys):
    from tests.test_bad_input import call

    for path, message in _bad_cases(tmp_path):
        code, err = call(
            training,
            [
                "--dataset",
                "custom",
                "--data_file",
                path,
                "--results_dir",
                tmp_path / "r",
                "--device",
                "cpu",
                "--n_epoch",
                "1",
            ],
            capsys,
        )
        assert code == 3 and message in err and len(err.strip().splitlines()) == 1, (path, err)
        assert not os.path.exists(
            tmp_path / "r" / f"custom_{os.path.splitext(os.path.basename(path))[0]}_seed_0" / "state.pth.tar"
        )


@pytest.mark.slow
def test_image_folder_link_loop_reads_each_image_once(tmp_path):
    path, clean, _ = write_custom(str(tmp_path), n_train=60, folder=True)
    first, second = (os.path.join(path, c) for c in sorted(CUSTOM_CLASSES)[:2])
    os.symlink(first, os.path.join(first, "self"))  # a loop: <first>/self -> <first>
    os.symlink(second, os.path.join(first, "again"))  # another class's folder, linked again
    from bkd.data.custom import load_custom

    data = load_custom(path)
    assert len(data.y_train) == 60 and len(set(data.ids)) == 60
    assert not any("self" in i for i in data.ids)
    counts = dict(zip(data.classes, np.bincount(data.y_train), strict=False))
    results = str(tmp_path / "results")
    os.makedirs(results)
    out = run(
        "blind_knowledge_dist_training.py",
        "--dataset",
        "custom",
        "--data_file",
        path,
        "--results_dir",
        results,
        *TRAIN[2:],
        "--n_epoch",
        "1",
        cwd=results,
    ).stdout
    assert "60 training images" in out and ", ".join(f"{k} {n}" for k, n in counts.items()) in out


@pytest.mark.slow
def test_empty_test_set_is_no_test_set(tmp_path):
    rng = np.random.RandomState(0)
    x = rng.randint(0, 255, (40, 32, 32, 3)).astype(np.uint8)
    path = _npz(tmp_path / "notest.npz", x_train=x, y_train=np.arange(40) % 2, x_test=x[:0], y_test=np.zeros(0, int))
    results = str(tmp_path / "results")
    os.makedirs(results)
    out = run(
        "blind_knowledge_dist_training.py",
        "--dataset",
        "custom",
        "--data_file",
        path,
        "--results_dir",
        results,
        *TRAIN[2:],
        "--n_epoch",
        "1",
        cwd=results,
    ).stdout
    assert "no test set: no test accuracy" in out and "acc on clean test_data" not in out


@pytest.mark.slow
def test_small_images_with_a_last_training_batch_of_one(tmp_path):
    """8x8 images leave 1x1 maps in the last stage, where BatchNorm cannot train on one image: the batch is merged."""
    rng = np.random.RandomState(0)
    n = 33 + 4  # --val_ratio 0.1 of 37 -> 3 validation, 34 training = 32 + 2; with batch 33: 33 + 1
    x = rng.randint(0, 255, (n, 8, 8, 3)).astype(np.uint8)
    path = _npz(tmp_path / "small.npz", x_train=x, y_train=np.arange(n) % 2)
    results = str(tmp_path / "results")
    os.makedirs(results)
    out = run(
        "blind_knowledge_dist_training.py",
        "--dataset",
        "custom",
        "--data_file",
        path,
        "--results_dir",
        results,
        *TRAIN[2:],
        "--n_epoch",
        "1",
        "--batch_size",
        "33",
        "--keep_image_size",
        cwd=results,
    )
    assert "[bkd] finished" in out.stdout
