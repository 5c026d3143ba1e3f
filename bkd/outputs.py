"""What a run writes, and when. The loop (bkd/run.py) tells its outputs what happened; each decides what it means.

* `Output`: the events, each a no-op here; an output defines those it needs. Every event gets the Run (bkd.run.Run),
  whose `epoch`, networks, `state` (MethodState) and `last` training pass it may read, never change.
* `RunFiles`: every file of a run directory, as the table in its docstring says, and its TensorBoard curves
  (bkd/curves.py). A trace (bkd/trace.py, --trace) is another output.
"""

import copy
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from bkd import review as review_page
from bkd import rundir as rd
from bkd.curves import Curves
from bkd.issues import label_issue_rows, write_label_issues
from bkd.utils import logfmt
from bkd.utils.checkpoint import model_checkpoint
from bkd.utils.files import BackgroundWriter, save_json, save_numpy, save_torch
from bkd.utils.machine import machine_info

if TYPE_CHECKING:
    import torch

    from bkd.run import Job, Run, Step
    from bkd.state import MethodState, Split
from bkd.utils.metrics import detection_scores


class Output:
    """What hears a run's events (RunFiles, bkd.trace.Trace): each event a no-op here."""

    def start(self, run: "Run", start_epoch: int) -> None:
        """Data, networks and loaders are ready; training starts at `start_epoch` (> 0: resumed)."""

    def iteration(self, run: "Run", step: "Step") -> None:
        """A training iteration ended (a bkd.run.Step)."""

    def save_models(self, run: "Run", kind: str, best: bool) -> None:
        """kind: 'best_val' (a new best validation accuracy) or 'end_of_training' (after the last epoch); `best`: these
        weights are (now) the best-by-validation checkpoint (the reference mode's end save is too, as the
        original's)."""

    def split(self, run: "Run") -> None:
        """The Otsu split of `run.state.split_epoch` is made: training groups fixed, detection decided."""

    def epoch_end(self, run: "Run") -> None:
        """Epoch `run.epoch` is complete; `run.resume_state()` continues the run from here."""

    def finish(self) -> None:
        """The run stops, finished or not: whatever is pending is completed (or its error raised)."""


def writes_in_background(device: "torch.device") -> bool:
    """On a GPU the training thread mostly waits for the device, and an epoch takes seconds: the files are written on a
    thread of their own. On a CPU the writer would compete with the training for the same cores, and an epoch takes
    far longer than its files: they are written at once."""
    return device.type == "cuda"


class RunFiles(Output):
    """Every file a training run writes into its run directory (docs/layout.md):

    | file | written |
    | --- | --- |
    | train_subset.npy | at the start of a fresh run with --subset |
    | teacher.pth.tar, student.pth.tar | at a new best validation accuracy (and at the end where none was above 0) |
    | teacher_last.pth.tar, student_last.pth.tar | after the last epoch |
    | detection.npy, agreement.npy, pred_probs.npy, label_issues.csv | at the split, all or none |
    | state.pth.tar (the resume state), metrics.json | at the end of every epoch, after the files above |
    | events.out.tfevents.* (TensorBoard) | every epoch and at the split |

    The training thread copies what is to be written into host memory; a BackgroundWriter writes the files, in
    the order of the events (on their own thread where `background`: by default writes_in_background). The next epoch's
    end waits until the previous epoch's files are on disk, so at most one epoch is pending: a kill at any moment
    leaves the complete files of the last or the one but last epoch (resume continues from there, as from any kill);
    an interrupt or an error waits for them (`finish`).
    """

    def __init__(
        self,
        run_dir: rd.RunDir,
        job: "Job",
        identity: dict[str, Any],
        flags: dict[str, Any],
        background: bool | None = None,
    ) -> None:
        self.run, self.data, self.log = run_dir, job.data, job.log
        self.identity = identity  # what a resumed run must match (bkd.resume.identity)
        self.flags, self.machine = flags, machine_info(job.device, job.computation)  # for metrics.json
        self.writer = BackgroundWriter(writes_in_background(job.device) if background is None else background)
        self.curves = Curves(run_dir.path, job.data.truly_noisy, job.log)

    def start(self, run: "Run", start_epoch: int) -> None:
        if start_epoch == 0:
            self.run.start_fresh()  # leftovers go, an --overwritten run goes aside: only now that everything is ready
            if len(self.data.subset) != len(self.data.given):
                save_numpy(self.data.subset, self.run.file(rd.SUBSET))
        for notice in self.run.notices:
            self.log(logfmt.ours(notice))
        self.curves.start(start_epoch)

    def save_models(self, run: "Run", kind: str, best: bool) -> None:
        pairs = [(rd.TEACHER, rd.STUDENT)] if best else []
        if kind == "end_of_training":
            pairs.append((rd.TEACHER_LAST, rd.STUDENT_LAST))
        for pair in pairs:
            for name, net in zip(pair, (run.teacher, run.student), strict=True):
                checkpoint = model_checkpoint(net, run.epoch, self.data.info["num_classes"], run.config.width)
                self.writer.submit(save_torch, checkpoint, self.run.file(name))

    def split(self, run: "Run") -> None:
        result = run.state.split_result()
        assert result is not None and result.probs is not None  # (the split this process just made)
        assert run.state.full_split is not None  # (made with it)
        truly_noisy = self.data.truly_noisy
        review = (
            run.state.overfit_epoch,
            dict(run.state.full_split),
            None if truly_noisy is None else int(truly_noisy.sum()),
        )
        self.writer.submit(self._write_split, result, result.probs, review)
        self.curves.split(run.epoch, run.state, result)

    def _write_split(
        self, split: "Split", probs: np.ndarray, review: tuple[int | None, dict[str, float], int | None]
    ) -> None:
        """The split's files, all or none: a failed write removes those written before it. (metrics.json, written
        with the epoch's resume state after them, records the split: the evaluations trust the files only then.)
        `review`: the overfitting epoch, the full set's Otsu split and the number of known noisy labels, for
        review.html."""
        try:
            save_numpy(split.detected, self.run.file(rd.DETECTION))
            save_numpy(split.label_prob, self.run.file(rd.AGREEMENT))
            save_numpy(probs, self.run.file(rd.PRED_PROBS))
            rows = label_issue_rows(split, self.data)
            write_label_issues(self.run.file(rd.LABEL_ISSUES), rows)
            overfit_epoch, otsu, noisy = review
            name = os.path.basename(os.path.normpath(self.run.path))
            header = review_page.header_of(name, overfit_epoch, split.epoch, otsu, rows, noisy)
            review_page.write(self.run.file(rd.REVIEW), review_page.run_page(rows, self.data, header))
        except BaseException:
            for name in rd.SPLIT_FILES:
                if self.run.has(name):
                    os.remove(self.run.file(name))
            raise

    def epoch_end(self, run: "Run") -> None:
        self.writer.drain()  # the previous epoch's files are on disk (or their error is raised here)
        self.curves.epoch(run.epoch, run.last.lr, run.state)  # before the state: an epoch on disk has its curves
        metrics = copy.deepcopy(self.metrics(run.state, run.epoch + 1))  # the training goes on changing the state
        self.writer.submit(self._write_epoch, dict(run.resume_state(), **self.identity), metrics)

    def _write_epoch(self, resume_state: dict[str, Any], metrics: dict[str, Any]) -> None:
        save_torch(resume_state, self.run.file(rd.STATE))
        save_json(metrics, self.run.file(rd.METRICS))
        self.run.epoch_completed()

    def finish(self) -> None:
        try:
            self.writer.drain()
        finally:
            self.curves.close()

    def metrics(self, state: "MethodState", epochs_done: int) -> dict[str, Any]:
        """metrics.json after `epochs_done` epochs."""
        truly_noisy = self.data.truly_noisy
        detection = None
        if state.detected is not None and truly_noisy is not None:
            detection = dict(detection_scores(state.detected, truly_noisy), **(state.ranking or {}))
        return {
            "config": self.flags,
            "machine": self.machine,
            # the data's fingerprint: learning.py and detection.py check what they evaluate
            "data": self.identity["data"],
            "corrections_sha256": self.identity["args"].get("corrections"),  # the corrections file applied, if any
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
