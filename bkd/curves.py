"""A run's curves as TensorBoard event files in its run directory: `tensorboard --logdir results` shows every run of a
grid side by side, under its run name.

Per epoch (step = the 0-based epoch): the losses, the learning rate, the student's mean top probability (the curve
whose peak is the overfitting epoch), validation and test accuracy where measured, and the epoch's seconds. At the
split (step = the epoch in which it is made, which the overfitting rule reaches two or more epochs after the epoch
it picks; `split/epoch` says whose statistics were split): that epoch and the overfitting epoch, the full set's Otsu
threshold and means, the four trust groups' sizes, the histogram of the agreement probability of the given labels,
and, where clean labels are known, detection precision, recall, F1 and AUROC.

Every value is written before the epoch's resume state (bkd/outputs.py), so an epoch whose state is on disk has its
curves on disk too, and a resumed run starts its writer with `purge_step` at its first epoch: TensorBoard then drops
whatever an interrupted process wrote from that step on (the split's values too, written at the step of their
epoch), so every step appears once. A write that fails (a full disk) stops the run in one line (exit 4) and leaves
no empty event file behind.
"""

import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from bkd.utils import logfmt
from bkd.utils.errors import RunDirError
from bkd.utils.files import shown
from bkd.utils.logfmt import Log
from bkd.utils.metrics import detection_scores

if TYPE_CHECKING:
    from bkd.state import MethodState, Split


def _quiet_writer_threads() -> Callable[[], None]:
    """TensorBoard's writer thread re-raises a failed write (a full disk) as it dies, which Python prints as a thread's
    traceback; the same error reaches the caller at its next write or flush (Curves._write says it in one line). So,
    while a run writes curves, threading.excepthook passes over that one error; returns what puts the caller's hook
    back (Curves.close calls it: the Python API leaves no hook of its own in the caller's process)."""
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if type(args.thread).__name__ != "_AsyncWriterThread" or not issubclass(args.exc_type, OSError):
            previous(args)

    threading.excepthook = hook

    def restore() -> None:
        if threading.excepthook is hook:  # (not if another hook was installed over it since: that one stays)
            threading.excepthook = previous

    return restore


class Curves:
    """TensorBoard's writer for one run directory, or nothing (with one notice) where tensorboard is not installed."""

    def __init__(self, path: str, truly_noisy: np.ndarray | None, log: Log = print) -> None:
        self.path, self.truly_noisy, self.log = path, truly_noisy, log
        self.writer: Any = None  # torch.utils.tensorboard.SummaryWriter
        self._open: Callable[[], Any] | None = None  # makes the writer at the first value (a finished run: no file)
        self._restore_hook: Callable[[], None] | None = None

    def start(self, start_epoch: int) -> None:
        """The run starts at `start_epoch`: the writer opens at the first value (purging what a stopped run wrote
        from that step on)."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # (torch raises it when the tensorboard package is missing)
            self.log(
                logfmt.ours("no TensorBoard curves: the tensorboard package is not installed (pip install tensorboard)")
            )
            return
        self._open = lambda: SummaryWriter(self.path, purge_step=start_epoch or None)
        self._restore_hook = _quiet_writer_threads()

    @property
    def writing(self) -> bool:
        """A writer is open or can be (tensorboard is installed and the run started)."""
        return self.writer is not None or self._open is not None

    def epoch(self, epoch: int, lr: float, state: "MethodState") -> None:
        """The curves of a completed epoch."""
        if not self.writing:
            return
        loss, naive, comp = state.losses[-1]
        values = {
            "loss/total": loss,
            "loss/naive": naive,
            "loss/compensation": comp,
            "lr": lr,
            "student_mean_top_probability": state.mean_top_all[-1],
            "accuracy/validation": state.accuracy_at(epoch, "val"),
            "accuracy/test": state.accuracy_at(epoch, "test"),
            "epoch_seconds": state.epoch_seconds[-1],
        }
        self._write(epoch, {tag: value for tag, value in values.items() if value is not None})

    def split(self, epoch: int, state: "MethodState", split: "Split") -> None:
        """The split made in `epoch` (of the statistics of split.epoch)."""
        if not self.writing:
            return
        full_split, groups = state.full_split, state.groups
        assert full_split is not None and groups is not None  # (made with the split)
        values: dict[str, float] = {"split/epoch": split.epoch}
        if state.overfit_epoch is not None:
            values["split/overfitting_epoch"] = state.overfit_epoch
        for key, tag in (("threshold", "threshold"), ("mu1", "lower_mean"), ("mu2", "upper_mean")):
            values[f"split/otsu_{tag}"] = full_split[key]
        for group in range(1, 5):
            values[f"split/group_{group}_size"] = int((groups == group).sum())
        if self.truly_noisy is not None and self.truly_noisy.any():
            scores = detection_scores(split.detected, self.truly_noisy)
            values.update({f"detection/{key}": scores[key] for key in ("precision", "recall", "f1")})
            auroc = (state.ranking or {}).get("auroc")
            if auroc is not None:
                values["detection/auroc"] = auroc
        self._write(epoch, values, histogram=("split/agreement_of_given_labels", split.label_prob))

    def _write(self, step: int, scalars: dict[str, float], histogram: tuple[str, np.ndarray] | None = None) -> None:
        """Write and flush (a kill keeps what was written); a failure is one line, and leaves no empty event file."""
        try:
            if self.writer is None:
                assert self._open is not None  # (called only while `writing`)
                self.writer = self._open()
            for tag, value in scalars.items():
                self.writer.add_scalar(tag, value, step)
            if histogram is not None:
                self.writer.add_histogram(*histogram, step)
            self.writer.flush()
        except OSError as err:
            self._abandon()
            raise RunDirError(
                f"cannot write the TensorBoard curves in {shown(self.path)} ({err.strerror or err}), so "
                "their epoch is not kept; free space or make the folder writable"
            ) from None

    def _abandon(self) -> None:
        """After a failed write: close the writer quietly, and remove the event files nothing reached (the writer makes
        its file at its first write, even one that fails)."""
        writer, self.writer, self._open = self.writer, None, None
        try:
            if writer is not None:
                writer.close()
        except Exception:  # noqa: BLE001 - the same failing disk; the write's own error is what is reported
            pass
        for name in os.listdir(self.path):
            path = os.path.join(self.path, name)
            if name.startswith("events.out.tfevents.") and os.path.getsize(path) == 0:
                os.remove(path)

    def close(self) -> None:
        """Close the writer (its files are complete), and put the caller's thread hook back."""
        try:
            if self.writer is not None:
                self.writer.close()
                self.writer = None
        finally:
            if self._restore_hook is not None:
                self._restore_hook()
                self._restore_hook = None
