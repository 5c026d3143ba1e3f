"""Training curves in TensorBoard (bkd/curves.py)."""

import os
import signal
import subprocess
import sys

import pytest

from tests.cli import ROOT, run, script, tiny_flags

pytest.importorskip("tensorboard", reason="tensorboard is not installed (requirements.txt installs it)")

EPOCH_TAGS = {"loss/total", "loss/naive", "loss/compensation", "lr", "student_mean_top_probability", "epoch_seconds"}
SPLIT_TAGS = {
    "split/otsu_threshold",
    "split/otsu_lower_mean",
    "split/otsu_upper_mean",
    "split/group_1_size",
    "split/group_4_size",
    "detection/precision",
    "detection/recall",
    "detection/f1",
    "detection/auroc",
}


def _curves(run_dir):
    """Every scalar's steps as TensorBoard itself reads the run directory (its reader applies purge_step)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    tags = acc.Tags()
    return {tag: [e.step for e in acc.Scalars(tag)] for tag in tags["scalars"]}, tags["histograms"], acc


# The training script, killed with SIGKILL by itself right after the split's curves are flushed (in the epoch that
# makes the split, before that epoch's resume state is written): a kill at the one moment that wrote curves twice.
KILLED_AFTER_THE_SPLITS_CURVES = """
import os, runpy, signal, sys
import bkd.curves
split = bkd.curves.Curves.split
def split_then_die(self, *args):
    split(self, *args)
    os.kill(os.getpid(), signal.SIGKILL)
bkd.curves.Curves.split = split_then_die
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow
def test_a_killed_and_resumed_run_has_every_curve_and_each_step_once(synthetic_root, tmp_path):
    """SIGKILL right after the split's values were written (epoch 5, which acts on the forced overfitting epoch 1), then
    --resume: TensorBoard's reader sees every epoch once and the split's values once, at the epoch that made it (the
    resumed writer purges from its first epoch, 5: the split's values of the killed process go with it)."""
    flags = tiny_flags(synthetic_root, str(tmp_path), n_epoch=7, overfitting_epoch=1, print_freq=1)
    env = dict(os.environ, PYTHONPATH=ROOT)
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_AFTER_THE_SPLITS_CURVES, script("blind_knowledge_dist_training.py"), *flags],
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL and "[bkd] split of epoch 1" in killed.stdout, killed.stderr[-2000:]
    run_dir = os.path.join(tmp_path, "cifar10_worst_seed_0")
    assert _curves(run_dir)[0]["split/epoch"] == [5]  # on disk before the kill
    run("blind_knowledge_dist_training.py", *flags, "--resume", cwd=str(tmp_path))
    assert len([n for n in os.listdir(run_dir) if n.startswith("events.out.tfevents.")]) == 2
    scalars, histograms, acc = _curves(run_dir)
    assert EPOCH_TAGS | SPLIT_TAGS | {"accuracy/validation", "accuracy/test", "split/overfitting_epoch"} <= set(scalars)
    for tag in EPOCH_TAGS:
        assert scalars[tag] == list(range(7)), (tag, scalars[tag])
    assert scalars["accuracy/validation"] == [0, 2, 4, 6] and scalars["accuracy/test"] == [0, 4, 6]
    made = 5  # the epoch that made the split: the overfitting epoch (forced to 1) is acted upon after epoch 5
    assert all(scalars[tag] == [made] for tag in SPLIT_TAGS | {"split/epoch", "split/overfitting_epoch"}), scalars
    assert acc.Scalars("split/overfitting_epoch")[0].value == 1 and acc.Scalars("split/epoch")[0].value == 1
    assert histograms == ["split/agreement_of_given_labels"]
    assert [e.step for e in acc.Histograms("split/agreement_of_given_labels")] == [made]
    assert acc.Scalars("lr")[0].value == pytest.approx(0.02) and acc.Scalars("lr")[6].value == pytest.approx(0.002)


def test_a_full_disk_when_the_curves_are_first_written_is_one_line_and_loses_no_curve(tmp_path, monkeypatch, capfd):
    """The first epoch's curves on a full disk: one line (RunDirError, exit 4 from a script), no thread's traceback,
    no empty event file, and the epoch is not kept; once there is room, the run resumes and has every epoch's curves."""
    import numpy as np

    from bkd import find_label_issues, outputs
    from bkd.curves import Curves
    from bkd.utils.errors import RunDirError
    from tests.cli import tmpfs

    with tmpfs(tmp_path / "full", "64k", "to fill a disk") as full:
        try:
            with open(full / "filler", "wb") as fh:
                fh.write(b"x" * 65536)
        except OSError:
            pass
        monkeypatch.setattr(outputs, "Curves", lambda path, truly_noisy, log: Curves(str(full), truly_noisy, log))
        images, labels = np.random.RandomState(0).randint(0, 255, (60, 32, 32, 3)).astype(np.uint8), np.arange(60) % 3
        flags = dict(n_epoch=2, width=4, batch_size=16, device="cpu", run_dir=str(tmp_path / "run"))
        with pytest.raises(
            RunDirError,
            match=r"^cannot write the TensorBoard curves in .* \(No space left on device\), "
            r"so their epoch is not kept; free space or make the folder writable$",
        ):
            find_label_issues(images, labels, **flags)
        assert not capfd.readouterr().err  # no traceback of TensorBoard's writer thread
        assert os.listdir(full) == ["filler"]  # no empty event file
        assert not (tmp_path / "run" / "state.pth.tar").exists()  # the epoch whose curves failed is not kept
    monkeypatch.undo()
    find_label_issues(images, labels, **flags)
    assert _curves(str(tmp_path / "run"))[0]["loss/total"] == [0, 1]


@pytest.mark.slow
def test_overwrite_replaces_the_curves(synthetic_root, tmp_path):
    flags = tiny_flags(synthetic_root, str(tmp_path), n_epoch=1)
    run("blind_knowledge_dist_training.py", *flags, cwd=str(tmp_path))
    run_dir = os.path.join(tmp_path, "cifar10_worst_seed_0")
    first = sorted(n for n in os.listdir(run_dir) if n.startswith("events.out.tfevents."))
    run("blind_knowledge_dist_training.py", *flags, "--overwrite", cwd=str(tmp_path))
    second = sorted(n for n in os.listdir(run_dir) if n.startswith("events.out.tfevents."))
    assert len(second) == 1 and second != first
    assert _curves(run_dir)[0]["loss/total"] == [0]


@pytest.mark.slow
def test_without_tensorboard_a_run_says_so_once_and_trains(synthetic_root, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "tensorboard.py").write_text("raise ImportError('hidden by the test')\n")
    env = dict(os.environ, PYTHONPATH=str(blocker))
    proc = subprocess.run(
        [
            sys.executable,
            script("blind_knowledge_dist_training.py"),
            *tiny_flags(synthetic_root, str(tmp_path), n_epoch=1),
        ],
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
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
