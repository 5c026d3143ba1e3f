"""Training curves in TensorBoard (bkd/curves.py)."""
import os
import signal
import subprocess
import sys

import pytest

from tests.cli import run, script, tiny_flags

pytest.importorskip("tensorboard", reason="tensorboard is not installed (requirements.txt installs it)")

EPOCH_TAGS = {"loss/total", "loss/naive", "loss/compensation", "lr", "student_mean_top_probability", "epoch_seconds"}
SPLIT_TAGS = {"split/otsu_threshold", "split/otsu_lower_mean", "split/otsu_upper_mean", "split/group_1_size",
              "split/group_4_size", "detection/precision", "detection/recall", "detection/f1", "detection/auroc"}


def _curves(run_dir):
    """Every scalar's steps as TensorBoard itself reads the run directory (its reader applies purge_step)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    tags = acc.Tags()
    return {tag: [e.step for e in acc.Scalars(tag)] for tag in tags["scalars"]}, tags["histograms"], acc


def test_a_killed_and_resumed_run_has_every_curve_and_each_step_once(synthetic_root, tmp_path):
    """SIGKILL in epoch 4, after epoch 3's values were written, then --resume: TensorBoard's reader sees every epoch
    once (the resumed writer purges from its first epoch), and the split's values at the split epoch."""
    flags = tiny_flags(synthetic_root, str(tmp_path), n_epoch=7, overfitting_epoch=1, print_freq=1)
    proc = subprocess.Popen([sys.executable, script("blind_knowledge_dist_training.py"), *flags], cwd=str(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dir = os.path.join(tmp_path, "cifar10_worst_seed_0")
    for line in proc.stdout:
        if line.startswith("epoch:   4/"):
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run("blind_knowledge_dist_training.py", *flags, "--resume", cwd=str(tmp_path))
    assert len([n for n in os.listdir(run_dir) if n.startswith("events.out.tfevents.")]) == 2
    scalars, histograms, acc = _curves(run_dir)
    assert EPOCH_TAGS | SPLIT_TAGS | {"accuracy/validation", "accuracy/test", "split/overfitting_epoch"} <= set(scalars)
    for tag in EPOCH_TAGS:
        assert scalars[tag] == list(range(7)), (tag, scalars[tag])
    assert scalars["accuracy/validation"] == [0, 2, 4, 6] and scalars["accuracy/test"] == [0, 4, 6]
    split = 1  # the statistics of the overfitting epoch (forced to 1; acted upon after epoch 5)
    assert all(scalars[tag] == [split] for tag in SPLIT_TAGS)
    assert acc.Scalars("split/overfitting_epoch")[0].value == 1
    assert histograms == ["split/agreement_of_given_labels"]
    assert acc.Scalars("lr")[0].value == pytest.approx(0.02) and acc.Scalars("lr")[6].value == pytest.approx(0.002)


def test_overwrite_replaces_the_curves(synthetic_root, tmp_path):
    flags = tiny_flags(synthetic_root, str(tmp_path), n_epoch=1)
    run("blind_knowledge_dist_training.py", *flags, cwd=str(tmp_path))
    run_dir = os.path.join(tmp_path, "cifar10_worst_seed_0")
    first = sorted(n for n in os.listdir(run_dir) if n.startswith("events.out.tfevents."))
    run("blind_knowledge_dist_training.py", *flags, "--overwrite", cwd=str(tmp_path))
    second = sorted(n for n in os.listdir(run_dir) if n.startswith("events.out.tfevents."))
    assert len(second) == 1 and second != first
    assert _curves(run_dir)[0]["loss/total"] == [0]


def test_without_tensorboard_a_run_says_so_once_and_trains(synthetic_root, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "tensorboard.py").write_text("raise ImportError('hidden by the test')\n")
    env = dict(os.environ, PYTHONPATH=str(blocker))
    proc = subprocess.run([sys.executable, script("blind_knowledge_dist_training.py"),
                           *tiny_flags(synthetic_root, str(tmp_path), n_epoch=1)], cwd=str(tmp_path), env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("[bkd] no TensorBoard curves: the tensorboard package is not installed") == 1


def test_the_api_writes_curves_only_into_a_run_directory(tmp_path, monkeypatch):
    import numpy as np

    from bkd import find_label_issues

    images, labels = np.random.RandomState(0).randint(0, 255, (60, 32, 32, 3)).astype(np.uint8), np.arange(60) % 3
    flags = dict(n_epoch=1, width=4, batch_size=16, device="cpu")
    monkeypatch.chdir(tmp_path)
    find_label_issues(images, labels, **flags)
    assert not [n for _, _, files in os.walk(tmp_path) for n in files if n.startswith("events.out")]
    find_label_issues(images, labels, run_dir=str(tmp_path / "run"), **flags)
    assert _curves(str(tmp_path / "run"))[0]["loss/total"] == [0]

