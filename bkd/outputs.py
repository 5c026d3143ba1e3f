"""Who hears what a training run does. The run (bkd/run.py) announces events; listeners decide what they mean.

* `Listener`: the events, each a no-op; subclass what you need.
* `RunFiles`: every file of a run directory (checkpoints best and last, detection.npy, agreement.npy,
  pred_probs.npy, label_issues.csv, metrics.json and the resume state), written from host copies on a thread of
  their own, in order, so that the training does not wait for the disk; and its TensorBoard curves (bkd/curves.py).
* `Results`: keeps the split in memory (the Python API without a run directory).
* `Listeners`: several listeners as one, called in order (files first, so a trace can read them).
"""
import copy
import os

import numpy as np

from bkd.curves import Curves
from bkd.issues import write_label_issues
from bkd import rundir as rd
from bkd.utils import logfmt
from bkd.utils.checkpoint import model_checkpoint
from bkd.utils.files import BackgroundWriter, save_json, save_numpy, save_torch
from bkd.utils.metrics import detection_scores


class Listener:
    def built(self, teacher, student):
        """Both networks exist, initialised, before anything else draws a random number."""

    def start(self, start_epoch):
        """Data, networks and loaders are ready; training starts at `start_epoch` (> 0: resumed)."""

    def epoch_start(self, epoch):
        pass

    def iteration(self, epoch, i, idx, x, y, target, loss, naive, comp):
        pass

    def checkpoint(self, kind, epoch, teacher, student, best):
        """kind: 'best_val' (a new best validation accuracy) or 'end_of_training' (after the last epoch); `best`: these
        weights are (now) the best-by-validation checkpoint (the reference mode's end save is too, as the original's)."""

    def split(self, event):
        """The Otsu split of `event.epoch` (a SplitEvent): training groups fixed, detection decided."""

    def epoch_end(self, epoch, row, teacher, student, resume_state, state):
        """Epoch `epoch` is complete: `resume_state` (host memory) continues the run from here, `state` is the method's
        MethodState."""

    def finish(self):
        """The run stops, finished or not: whatever is pending is completed (or its error raised)."""


class Listeners(Listener):
    """Several listeners as one, called in the order given."""

    def __init__(self, *listeners):
        self.listeners = [listener for listener in listeners if listener is not None]

    def _each(self, event, *args, **kwargs):
        for listener in self.listeners:
            getattr(listener, event)(*args, **kwargs)

    def built(self, *args):
        self._each("built", *args)

    def start(self, *args):
        self._each("start", *args)

    def epoch_start(self, *args):
        self._each("epoch_start", *args)

    def iteration(self, *args):
        self._each("iteration", *args)

    def checkpoint(self, *args, **kwargs):
        self._each("checkpoint", *args, **kwargs)

    def split(self, *args):
        self._each("split", *args)

    def epoch_end(self, *args):
        self._each("epoch_end", *args)

    def finish(self):
        self._each("finish")


class Results(Listener):
    """The split's results in memory."""

    def __init__(self):
        self.event = None

    def split(self, event):
        self.event = event


def writes_in_background(device):
    """On a GPU the training thread mostly waits for the device, and an epoch takes seconds: the files are written on a
    thread of their own. On a CPU the writer would compete with the training for the same cores, and an epoch takes
    far longer than its files: they are written at once."""
    return device.type == "cuda"


class RunFiles(Listener):
    """Every file a training run writes into its run directory.

    The training thread copies what is to be written into host memory; a BackgroundWriter writes the files, in
    the order of the events (on their own thread where `background`, see writes_in_background). An epoch's resume
    state and metrics.json are written after its checkpoints and split files; the next epoch's end waits until
    they are on disk, so at most one epoch is pending: a kill at any moment leaves the complete files of the last
    or the one but last epoch (resume continues from there, as from any kill); an interrupt or an error waits
    for them (`finish`).
    """

    def __init__(self, run_dir, data, config, identity, flags, machine, log=print, background=False):
        self.run, self.data, self.config = run_dir, data, config
        self.identity = identity  # what a resumed run must match (bkd.resume.identity)
        self.flags, self.machine = flags, machine  # for metrics.json
        self.log = log
        self.writer = BackgroundWriter(background)
        self.curves = Curves(run_dir.path, data.truly_noisy, log)

    def start(self, start_epoch):
        if start_epoch == 0:
            self.run.start_fresh()  # leftovers go, an --overwritten run goes aside: only now that everything is ready
            if len(self.data.subset) != len(self.data.given):
                save_numpy(self.data.subset, self.run.file(rd.SUBSET))
        for notice in self.run.notices:
            self.log(logfmt.ours(notice))
        self.curves.start(start_epoch)

    def _save_pair(self, teacher_name, student_name, epoch, teacher, student):
        num_classes = self.data.info["num_classes"]
        for name, net in ((teacher_name, teacher), (student_name, student)):
            self.writer.submit(save_torch, model_checkpoint(net, epoch, num_classes, self.config.width), self.run.file(name))

    def checkpoint(self, kind, epoch, teacher, student, best):
        if best:
            self._save_pair(rd.TEACHER, rd.STUDENT, epoch, teacher, student)
        if kind == "end_of_training":
            self._save_pair(rd.TEACHER_LAST, rd.STUDENT_LAST, epoch, teacher, student)

    def split(self, event):
        self.writer.submit(self._write_split, event, self.data.ids[self.data.subset])
        self.curves.split(event)

    def _write_split(self, event, ids):
        """The split's files, all or none: a failed write removes those written before it. (metrics.json, written
        with the epoch's resume state after them, records the split: the evaluations trust the files only then.)"""
        try:
            save_numpy(event.detected, self.run.file(rd.DETECTION))
            save_numpy(event.label_prob, self.run.file(rd.AGREEMENT))
            if event.probs is not None:  # (a run resumed from a state of an earlier version has none)
                save_numpy(event.probs, self.run.file(rd.PRED_PROBS))
            write_label_issues(self.run.file(rd.LABEL_ISSUES), self.data.labels, event.label_prob, event.agreed,
                               event.agreed_prob, event.state.full_groups, self.data.classes, ids, self.data.subset)
        except BaseException:
            for name in rd.SPLIT_FILES:
                if self.run.has(name):
                    os.remove(self.run.file(name))
            raise

    def epoch_end(self, epoch, row, teacher, student, resume_state, state):
        self.writer.drain()  # the previous epoch's files are on disk (or their error is raised here)
        metrics = copy.deepcopy(self.metrics(state, epoch + 1))  # the training goes on changing `state`
        self.writer.submit(self._write_epoch, dict(resume_state, **self.identity), metrics)
        self.curves.epoch(epoch, row, state)

    def _write_epoch(self, resume_state, metrics):
        save_torch(resume_state, self.run.file(rd.STATE))
        save_json(metrics, self.run.file(rd.METRICS))
        self.run.epoch_completed()

    def finish(self):
        try:
            self.writer.drain()
        finally:
            self.curves.close()

    def metrics(self, state, epochs_done):
        truly_noisy = self.data.truly_noisy
        detection = None
        if state.detected is not None and truly_noisy is not None:
            detection = dict(detection_scores(state.detected, truly_noisy), **(state.ranking or {}))
        return {
            "config": self.flags,
            "machine": self.machine,
            "data": self.identity["data"],  # the data's fingerprint: learning.py and detection.py check what they evaluate
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
