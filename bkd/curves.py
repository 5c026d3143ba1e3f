"""A run's curves as TensorBoard event files in its run directory: `tensorboard --logdir results` shows every run of a
grid side by side, under its run name.

Per epoch (step = the 0-based epoch): the losses, the learning rate, the student's mean top probability (the curve
whose peak is the overfitting epoch), validation and test accuracy where measured, and the epoch's seconds. At the
split (step = the split epoch): the overfitting epoch, the full set's Otsu threshold and means, the four trust
groups' sizes, the histogram of the agreement probability of the given labels, and, where clean labels are known,
detection precision, recall, F1 and AUROC. A resumed run starts its writer with `purge_step` at its first epoch:
TensorBoard then drops whatever an interrupted process wrote from that step on, so every step appears once.
"""
from bkd.utils import logfmt
from bkd.utils.metrics import detection_scores


class Curves:
    """TensorBoard's writer for one run directory, or nothing (with one notice) where tensorboard is not installed."""

    def __init__(self, path, truly_noisy, log=print):
        self.path, self.truly_noisy, self.log = path, truly_noisy, log
        self.writer = None
        self._open = None  # makes the writer at the first value: a resumed finished run writes no file

    def start(self, start_epoch):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # (torch raises it when the tensorboard package is missing)
            self.log(logfmt.ours("no TensorBoard curves: the tensorboard package is not installed (pip install tensorboard)"))
            return
        self._open = lambda: SummaryWriter(self.path, purge_step=start_epoch or None)

    def _writing(self):
        if self.writer is None and self._open is not None:
            self.writer = self._open()
        return self.writer is not None

    def epoch(self, epoch, lr, state):
        if not self._writing():
            return
        loss, naive, comp = state.losses[-1]
        values = {"loss/total": loss, "loss/naive": naive, "loss/compensation": comp, "lr": lr,
                  "student_mean_top_probability": state.mean_top_all[-1],
                  "accuracy/validation": state.accuracy_at(epoch, "val"), "accuracy/test": state.accuracy_at(epoch, "test"),
                  "epoch_seconds": state.epoch_seconds[-1]}
        for tag, value in values.items():
            if value is not None:
                self.writer.add_scalar(tag, value, epoch)
        self.writer.flush()  # a kill keeps every completed epoch's values

    def split(self, state, split):
        if not self._writing():
            return
        step = split.epoch
        add = self.writer.add_scalar
        if state.overfit_epoch is not None:
            add("split/overfitting_epoch", state.overfit_epoch, step)
        for key, tag in (("threshold", "threshold"), ("mu1", "lower_mean"), ("mu2", "upper_mean")):
            add(f"split/otsu_{tag}", state.full_split[key], step)
        for group in range(1, 5):
            add(f"split/group_{group}_size", int((state.groups == group).sum()), step)
        self.writer.add_histogram("split/agreement_of_given_labels", split.label_prob, step)
        if self.truly_noisy is not None and self.truly_noisy.any():
            scores = detection_scores(split.detected, self.truly_noisy)
            for key in ("precision", "recall", "f1"):
                add(f"detection/{key}", scores[key], step)
            if (state.ranking or {}).get("auroc") is not None:
                add("detection/auroc", state.ranking["auroc"], step)
        self.writer.flush()

    def close(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None
