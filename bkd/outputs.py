"""Who hears what a training run does. The run (bkd/run.py) announces events; listeners decide what they mean.

* `Listener`: the events, each a no-op; subclass what you need.
* `RunFiles`: every file of a run directory (checkpoints best and last, detection.npy, agreement.npy,
  pred_probs.npy, label_issues.csv, metrics.json and the resume state).
* `Results`: keeps the split in memory (the Python API without a run directory).
* `Listeners`: several listeners as one, called in order (files first, so a trace can read them).
"""
import numpy as np

from bkd.issues import write_label_issues
from utils import checkpoint as ck
from utils import logfmt
from utils.files import save_json, save_numpy, save_torch
from utils.metrics import detection_scores


class Listener:
    def built(self, teacher, student):
        """Both networks exist, initialised, before anything else draws a random number."""

    def start(self, start_epoch):
        """Data, networks and loaders are ready; training starts at `start_epoch` (> 0: resumed)."""

    def epoch_start(self, epoch):
        pass

    def iteration(self, epoch, i, idx, x, y, target, loss, naive, comp):
        pass

    def checkpoint(self, kind, epoch, teacher, student):
        """kind: 'best_val' (a new best validation accuracy) or 'end_of_training' (after the last epoch)."""

    def split(self, event):
        """The Otsu split of `event.epoch` (a SplitEvent): training groups fixed, detection decided."""

    def epoch_end(self, epoch, row, teacher, student, resume_state, state):
        """Epoch `epoch` is complete: `resume_state` continues the run from here, `state` is the method's MethodState."""


class Listeners(Listener):
    """Several listeners as one, called in the order given."""

    def __init__(self, *listeners):
        self.listeners = [listener for listener in listeners if listener is not None]

    def _each(self, event, *args):
        for listener in self.listeners:
            getattr(listener, event)(*args)

    def built(self, *args):
        self._each("built", *args)

    def start(self, *args):
        self._each("start", *args)

    def epoch_start(self, *args):
        self._each("epoch_start", *args)

    def iteration(self, *args):
        self._each("iteration", *args)

    def checkpoint(self, *args):
        self._each("checkpoint", *args)

    def split(self, *args):
        self._each("split", *args)

    def epoch_end(self, *args):
        self._each("epoch_end", *args)


class Results(Listener):
    """The split's results in memory."""

    def __init__(self):
        self.event = None

    def split(self, event):
        self.event = event


class RunFiles(Listener):
    """Every file a training run writes into its run directory."""

    def __init__(self, run_dir, data, config, end_save_overwrites_best, identity, flags, machine, log=print):
        self.run, self.data, self.config = run_dir, data, config
        self.end_save_overwrites_best = end_save_overwrites_best
        self.identity = identity  # what a resumed run must match (flags, data fingerprint, threads)
        self.flags, self.machine = flags, machine  # for metrics.json
        self.log = log

    def start(self, start_epoch):
        if start_epoch == 0:
            self.run.start_fresh()  # leftovers go, an --overwritten run goes aside: only now that everything is ready
            if len(self.data.subset) != len(self.data.given):
                save_numpy(self.data.subset, self.run.file(ck.SUBSET))
        for notice in self.run.notices:
            self.log(logfmt.ours(notice))

    def _save_pair(self, teacher_name, student_name, epoch, teacher, student):
        num_classes = self.data.info["num_classes"]
        ck.save_model(teacher, self.run.file(teacher_name), epoch, num_classes, self.config.width)
        ck.save_model(student, self.run.file(student_name), epoch, num_classes, self.config.width)

    def checkpoint(self, kind, epoch, teacher, student):
        if kind == "best_val" or self.end_save_overwrites_best:  # the original's end save overwrites the best
            self._save_pair(ck.TEACHER, ck.STUDENT, epoch, teacher, student)
        if kind == "end_of_training":
            self._save_pair(ck.TEACHER_LAST, ck.STUDENT_LAST, epoch, teacher, student)

    def split(self, event):
        data = self.data
        save_numpy(event.detected, self.run.file(ck.DETECTION))
        save_numpy(event.label_prob, self.run.file(ck.AGREEMENT))
        if event.probs is not None:  # (a run resumed from a state of an earlier version has none)
            save_numpy(event.probs, self.run.file(ck.PRED_PROBS))
        write_label_issues(self.run.file(ck.LABEL_ISSUES), data.labels, event.label_prob, event.agreed, event.agreed_prob,
                           event.state.full_groups, data.classes, data.ids[data.subset])

    def epoch_end(self, epoch, row, teacher, student, resume_state, state):
        save_torch(dict(resume_state, **self.identity), self.run.file(ck.STATE))
        save_json(self.metrics(state, epoch + 1), self.run.file(ck.METRICS))
        self.run.epoch_completed()

    def metrics(self, state, epochs_done):
        truly_noisy = self.data.truly_noisy
        detection = None
        if state.detected is not None and truly_noisy is not None:
            detection = dict(detection_scores(state.detected, truly_noisy), **(state.ranking or {}))
        return {
            "config": self.flags,
            "machine": self.machine,
            "epochs_completed": epochs_done,
            "mean_top_student": state.mean_top_student,
            "mean_top_student_all_epochs": state.mean_top_all,
            "overfit_epoch": state.overfit_epoch,
            "split_epoch": state.split_epoch,
            "split_fallback": state.split_epoch is not None and state.overfit_epoch is None,
            "otsu_train": state.split,
            "otsu_full": state.full_split,
            "group_sizes": None if state.groups is None else np.bincount(state.groups, minlength=5)[1:].tolist(),
            "val_acc": state.val_acc,
            "test_acc": state.test_acc,
            "best_val_acc": state.best_val if state.val_acc else None,
            "best_epoch": state.best_epoch,
            "epoch_seconds": state.epoch_seconds,
            "noise_rate": None if truly_noisy is None else float(np.mean(truly_noisy)),
            "detection": detection,
        }
