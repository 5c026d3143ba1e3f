"""The Python API: find_label_issues on a tiny synthetic set, against the CLI on the same data."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from bkd import find_label_issues
from bkd.issues import read_label_issues
from tests.cli import ROOT, run
from tests.synthetic import flip_labels, make_images

FLAGS = dict(n_epoch=8, width=8, batch_size=32, lr_step=6, noisy_val_freq=2, clean_test_freq=4, eval_batch_size=256)


@pytest.fixture(scope="module")
def flipped_set():
    rng = np.random.RandomState(0)
    images, clean = make_images(300, 5, rng)
    given = flip_labels(clean, 0.2, 5, rng)
    return images, given, given != clean


@pytest.fixture(scope="module")
def api_result(flipped_set):
    images, given, _ = flipped_set
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the CLI in the tests (tests/conftest.py)
    try:
        return find_label_issues(images, given, device="cpu", **FLAGS)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_flipped_labels_rank_high(api_result, flipped_set):
    _, given, flipped = flipped_set
    r = api_result
    k = int(flipped.sum())
    assert flipped[r.ranked[:k]].mean() >= 2.5 * flipped.mean()  # precision at k well above the base rate
    assert sorted(r.ranked.tolist()) == list(range(len(given)))
    assert np.all(np.diff(r.label_quality[r.ranked]) >= 0)  # ascending agreed probability of the given label
    assert r.pred_probs.shape == (len(given), 5) and np.allclose(r.pred_probs.sum(axis=1), 1, atol=1e-5)
    assert np.allclose(r.pred_probs[np.arange(len(given)), given], r.label_quality)  # the ranking key is pA[y]
    assert np.array_equal(r.suggested_label, r.pred_probs.argmax(axis=1))
    assert np.array_equal(r.flagged, r.group == 4) and r.flagged.any()


@pytest.mark.slow
def test_api_and_cli_rank_the_same_way(api_result, flipped_set, tmp_path):
    images, given, _ = flipped_set
    path = str(tmp_path / "mine.npz")
    np.savez(path, x_train=images, y_train=given)
    flags = [f"--{k}={v}" for k, v in FLAGS.items()]
    run(
        "blind_knowledge_dist_training.py",
        "--dataset",
        "custom",
        "--data_file",
        path,
        "--results_dir",
        tmp_path,
        "--device",
        "cpu",
        *flags,
        cwd=str(tmp_path),
    )
    run_dir = tmp_path / "custom_mine_seed_0"
    rows = read_label_issues(str(run_dir / "label_issues.csv"))
    assert [r["position"] for r in rows] == api_result.ranked.tolist()
    assert np.array_equal(np.load(run_dir / "detection.npy"), api_result.flagged)
    assert np.array_equal(np.load(run_dir / "pred_probs.npy"), api_result.pred_probs)


@pytest.mark.slow
def test_api_with_a_run_directory_writes_the_usual_outputs_and_reuses_them(flipped_set, tmp_path):
    images, given, _ = flipped_set
    flags = dict(FLAGS, n_epoch=6, noisy_val_freq=3)
    first = find_label_issues(images, given, device="cpu", run_dir=str(tmp_path / "run"), **flags)
    for name in (
        "label_issues.csv",
        "detection.npy",
        "agreement.npy",
        "pred_probs.npy",
        "metrics.json",
        "state.pth.tar",
    ):
        assert os.path.exists(tmp_path / "run" / name), name
    again = find_label_issues(images, given, device="cpu", run_dir=str(tmp_path / "run"), **flags)  # finished: reused
    assert np.array_equal(first.ranked, again.ranked) and np.array_equal(first.suggested_label, again.suggested_label)
    from bkd.utils.errors import DataError, UsageError

    with pytest.raises(
        UsageError,
        match=r"lr=0.05 differs from the run being resumed \(0.02\); call with the same "
        r"arguments, or give another run_dir",
    ):
        find_label_issues(images, given, device="cpu", run_dir=str(tmp_path / "run"), **dict(flags, lr=0.05))
    # a resume state of an earlier version kept no (N, C) probabilities of the split: one line saying so
    state = torch.load(tmp_path / "run" / "state.pth.tar", weights_only=True)
    for stats in state["method"]["stats"].values():
        stats.pop("full_probs", None)
    torch.save(state, tmp_path / "run" / "state.pth.tar")
    with pytest.raises(
        DataError,
        match="^the run directory holds a run of an earlier version of this project, which kept "
        "no agreement probabilities; give another run_dir",
    ):
        find_label_issues(images, given, device="cpu", run_dir=str(tmp_path / "run"), **flags)


def test_api_refuses_unknown_arguments_and_bad_data(flipped_set):
    from bkd.utils.errors import DataError, UsageError

    images, given, _ = flipped_set
    with pytest.raises(UsageError, match="unknown argument.*epochs"):
        find_label_issues(images, given, epochs=3)
    with pytest.raises(DataError, match="x_train must be uint8"):
        find_label_issues(images.astype(np.float32), given)


def test_api_checks_values_as_the_script_does(flipped_set):
    from bkd.utils.errors import UsageError

    images, given, _ = flipped_set
    for bad, message in (
        (dict(n_epoch=0), "--n_epoch 0 must be positive"),
        (dict(alpha4=1.5), "--alpha4 1.5 must be in"),
        (dict(reference=True, amp=True), "drop --amp"),
    ):
        with pytest.raises(UsageError, match=message):
            find_label_issues(images, given, **bad)


@pytest.mark.slow
def test_the_api_imports_from_a_folder_of_the_users_own_whose_modules_have_our_generic_names(tmp_path):
    """`pip install -e .` (requirements.txt) installs the package bkd alone: a script in another folder imports it, and
    its own data.py, utils/, models.py and flags.py stay its own, before and after."""
    for name in ("data.py", "models.py", "flags.py"):
        (tmp_path / name).write_text("WHO = 'mine'\n")
    (tmp_path / "utils").mkdir()
    (tmp_path / "utils" / "__init__.py").write_text("WHO = 'mine'\n")
    (tmp_path / "find.py").write_text(
        textwrap.dedent("""
        import data, flags, models, utils
        import numpy as np
        from bkd import find_label_issues

        rng = np.random.RandomState(0)
        images, labels = rng.randint(0, 255, (60, 32, 32, 3)).astype(np.uint8), np.arange(60) % 3
        result = find_label_issues(images, labels, n_epoch=1, width=4, batch_size=16, device="cpu")
        import data as d, flags as f, models as m, utils as u
        assert {d.WHO, f.WHO, m.WHO, u.WHO} == {"mine"}, "shadowed"
        print("ranked", len(result.ranked))
    """)
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "find.py"], cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300
    )
    if "No module named 'bkd'" in proc.stderr:
        pytest.fail(f"bkd is not installed in {sys.prefix}: pip install -e {ROOT} (requirements.txt does it)")
    assert proc.returncode == 0 and proc.stdout.split() == ["ranked", "60"], proc.stderr[-2000:]
