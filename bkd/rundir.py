"""The run directory (results/<run>/): its files, its name, its lock, and what counts as an earlier run in it.

What the evaluations check before they read a finished run is bkd/evaluations.py.
"""

import errno
import fcntl
import os
import shutil
import tempfile
from collections.abc import Sequence
from typing import IO, Any

from bkd.utils.errors import DataError, RunDirError
from bkd.utils.files import open_regular, read_json_object, save_json
from bkd.utils.stops import held

TEACHER, STUDENT = "teacher.pth.tar", "student.pth.tar"  # best by validation (the original's names)
TEACHER_LAST, STUDENT_LAST = "teacher_last.pth.tar", "student_last.pth.tar"  # the last epoch
STATE = "state.pth.tar"  # resumable state, rewritten after every epoch
DETECTION = "detection.npy"
AGREEMENT = "agreement.npy"  # the full-set statistic pA[y] that detection.npy splits
PRED_PROBS = "pred_probs.npy"  # (N, C) agreement probabilities of the full set at the split (for cleanlab)
LABEL_ISSUES = "label_issues.csv"  # every training image, most suspect label first
REVIEW = "review.html"  # the most suspect images, to look at and decide (bkd/review.py)
METRICS = "metrics.json"
SUBSET = "train_subset.npy"  # with --subset: the indices of the training images the run uses
SPLIT_FILES = (DETECTION, AGREEMENT, PRED_PROBS, LABEL_ISSUES, REVIEW)  # written together at the split
RUN_ARTEFACTS = (
    STATE,
    TEACHER,
    STUDENT,
    TEACHER_LAST,
    STUDENT_LAST,
    DETECTION,
    AGREEMENT,
    PRED_PROBS,
    LABEL_ISSUES,
    REVIEW,
    METRICS,
    SUBSET,
)
# Written about a run by the evaluations and the launcher; they belong to the run they describe.
RUN_RECORDS = ("learning.log", "detection.log", "launch.json", "confidence.png", "agreement.png", "accuracy.png")
PREVIOUS = ".previous"  # --overwrite: the replaced run, until the new one completes an epoch
REPLACED = ".replaced.json"  # in .previous/: the names of the replaced run's files, written before any of them moves
ALL_ASIDE = ".all_aside"  # in .previous/: every one of them is aside (until then the new run cannot have started)
DISCARDED = ".previous.discarded"  # .previous/ on its way out, once the new run completed an epoch
PIPELINE_LOCK = ".launch.lock"  # held by the launcher while it runs a run's steps
INCOMPLETE = ".incomplete"  # a run that has not completed its first epoch: its files are leftovers
CURVES_PREFIX = "events.out.tfevents."  # TensorBoard's event files (bkd/curves.py writes them into the run directory)


def run_dir_name(dataset: str, noise_type: str, seed: int, preset: str | None = "default") -> str:
    """<dataset>_<noise_type>_seed_<seed>[_<preset>]: a run directory's name, as results/ and the launcher use it."""
    name = f"{dataset}_{noise_type}_seed_{seed}"
    return name if preset in (None, "default") else f"{name}_{preset}"


class RunDir:
    """The run directory: locked for the lifetime of a training process, never left without a result.

    The lock is an flock on `.lock`, which the kernel releases when the process dies, so a
    killed run never leaves it stuck. A run counts as started once its first epoch completed
    (`state.pth.tar` exists). Until then it carries the marker `.incomplete`, and its files are
    leftovers that the same command replaces (as is a lone `train_subset.npy`); other files are
    never removed without `--overwrite`. `--overwrite` moves them aside into `.previous/` and
    deletes them only once the new run has completed an epoch; if the new run stops before that,
    they are moved back (at once, or by the next command after a kill).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock: IO[str] | None = None
        self._created = False  # this process made the directory: a refusal before any file of the run removes it
        self.notices: list[str] = []  # `[bkd] ` lines for the log: what opening found and did
        self._replaced = False  # an earlier run waits in .previous/ until the new one completes an epoch
        self._restored = False  # the new run completed no epoch, and the earlier run is back

    def file(self, name: str) -> str:
        """The path of the run's file `name`."""
        return os.path.join(self.path, name)

    def has(self, name: str) -> bool:
        """The run directory holds `name`."""
        return os.path.exists(self.file(name))

    def existing_artefacts(self, names: Sequence[str] = RUN_ARTEFACTS) -> list[str]:
        """Which of `names` the directory holds, in that order."""
        return [name for name in names if self.has(name)]

    def curve_files(self) -> list[str]:
        """The run's TensorBoard event files (bkd/curves.py)."""
        return sorted(name for name in os.listdir(self.path) if name.startswith(CURVES_PREFIX))

    def replaced_files(self) -> list[str]:
        """What --overwrite moves aside: the run's files, its curves and the records about it, except the record of a
        launcher that is running this very training (it holds the pipeline lock)."""
        records = (
            RUN_RECORDS
            if not lock_held(self.file(PIPELINE_LOCK))
            else tuple(r for r in RUN_RECORDS if r != "launch.json")
        )
        return self.existing_artefacts(RUN_ARTEFACTS + records) + self.curve_files()

    @property
    def started(self) -> bool:
        """True once an epoch completed: the resume state exists."""
        return self.has(STATE)

    @property
    def restartable(self) -> bool:
        """No completed epoch, and nothing but what an unfinished run of ours leaves behind."""
        return not self.started and (self.has(INCOMPLETE) or self.existing_artefacts() in ([], [SUBSET]))

    def open(
        self, resume: bool = False, overwrite: bool = False, elsewhere: str = "use another --seed/--results_dir"
    ) -> "RunDir":
        """Lock the directory for a training (creating it; a refusal leaves nothing created: see close). `elsewhere`:
        how the caller picks another directory (the command line's flags, or the API's run_dir)."""
        if resume and not os.path.isdir(self.path):
            raise RunDirError(f"nothing to resume in {self.path} (no such directory); start the run without --resume")
        self._created = not os.path.isdir(self.path)
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as err:
            fix = (
                "--run_dir names it in fewer characters"
                if err.errno == errno.ENAMETOOLONG and "--" in elsewhere
                else elsewhere
            )
            raise RunDirError(f"cannot write to run directory {self.path} ({err.strerror}); {fix}") from None
        try:
            check_writable(self.path, elsewhere)
            self.acquire(
                f"in use by another process (a training, or an evaluation of its run); wait for it or {elsewhere}"
            )
            self._check_for(resume, overwrite)
        except BaseException:
            self.close()
            raise
        return self

    def acquire(self, busy: str, shared: bool = False) -> None:
        """The directory's lock: exclusive for a training (which then clears what a killed one left), shared by the
        evaluations of a finished run, which may run together but never beside its training."""
        self._lock = open(self.file(".lock"), "a+")
        try:
            fcntl.flock(self._lock, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError as err:
            self._lock.close()
            self._lock = None
            if err.errno in (errno.EAGAIN, errno.EACCES):
                raise RunDirError(f"{self.path} is {busy}") from None
            raise
        if shared:
            return
        for name in os.listdir(self.path):  # temporary files of a writer killed mid-save (we hold the lock)
            if name.startswith(".") and name.endswith(".tmp"):
                os.remove(self.file(name))
        if os.path.isdir(self.file(DISCARDED)):  # removed once the new run completed an epoch; killed meanwhile
            shutil.rmtree(self.file(DISCARDED))
        if not os.path.isdir(self.file(PREVIOUS)):
            return
        if os.path.exists(os.path.join(self.file(PREVIOUS), ALL_ASIDE)) and self.has(STATE):  # the new run's state
            self._discard_previous()
            self.notices.append(
                "an earlier --overwrite was stopped after its new run completed an epoch; the run it replaced is "
                "removed, as it would have been"
            )
        else:  # an --overwrite killed before its new run completed an epoch, or while the earlier run was put back
            self.restore_previous()
            self.notices.append(
                f"an earlier --overwrite stopped before the new run completed an epoch; "
                f"the run it replaced is back in {self.path}"
            )

    def _check_for(self, resume: bool, overwrite: bool) -> None:
        files = ", ".join(self.existing_artefacts())
        if resume and not self.started:
            if not self.restartable:
                raise RunDirError(
                    f"nothing to resume in {self.path}: it holds {files} but no {STATE}; --overwrite "
                    "replaces them, or pick another --results_dir"
                )
            self.notices.append(f"nothing to resume in {self.path}: no epoch was completed; starting at epoch 0")
        elif not (resume or overwrite or self.restartable):
            raise RunDirError(
                f"{self.path} already holds a run ({files}); pass --resume to continue it, "
                "--overwrite to replace it, or another --results_dir"
            )

    def start_fresh(self) -> None:
        """Make room for a new run, once it is ready to start: leftovers go, anything else goes aside (--overwrite)."""
        files = self.existing_artefacts()
        if self.restartable:
            for name in files + self.curve_files():  # (a leftover's curves would mix with the new run's)
                os.remove(self.file(name))
            if files:
                self.notices.append(f"removed {', '.join(files)}: files of a run that completed no epoch")
        else:  # (signals held: a stop waits for the renames; a kill leaves the manifest for the next command)
            previous, names = self.file(PREVIOUS), self.replaced_files()
            with held():
                os.makedirs(previous)
                save_json({"files": names}, os.path.join(previous, REPLACED))
                for name in names:
                    os.replace(self.file(name), os.path.join(previous, name))
                with open(os.path.join(previous, ALL_ASIDE), "w"):
                    pass
                self._replaced = True
            self.notices.append(
                f"--overwrite: the earlier run is kept in {previous} until the new run completes its first epoch"
            )
        with open(self.file(INCOMPLETE), "w"):
            pass

    def epoch_completed(self) -> None:
        """The new run has a complete epoch on disk: no leftovers to mark, and no earlier run to keep for
        --overwrite."""
        if self.has(INCOMPLETE):
            os.remove(self.file(INCOMPLETE))
        if self._replaced:
            self._discard_previous()

    def _discard_previous(self) -> None:
        """The earlier run goes: out of a restore's reach at once (a rename), then from the disk."""
        os.replace(self.file(PREVIOUS), self.file(DISCARDED))
        shutil.rmtree(self.file(DISCARDED))
        self._replaced = False

    def restore_previous(self) -> None:
        """Put the run kept in .previous/ back in place of a new run that completed no epoch.

        Step by step, each of which a second pass repeats harmlessly, so that a kill at any point leaves it to the next
        command, which finishes it: the marker that everything was aside goes first (from then on the directory is
        being restored, never taken for a new run that completed an epoch); then the new run's files that are none
        of the earlier run's (its manifest names those); then each of the earlier run's files comes back, replacing a
        file of the new run of the same name; then the folder goes. Signals are held meanwhile: a stop comes after.
        """
        previous = self.file(PREVIOUS)
        with held():
            names = self._replaced_names()
            if os.path.exists(os.path.join(previous, ALL_ASIDE)):
                os.remove(os.path.join(previous, ALL_ASIDE))
            new = self.existing_artefacts() + self.curve_files() + [INCOMPLETE] * self.has(INCOMPLETE)
            for name in new if names else ():  # (none: killed before anything moved aside, so nothing is new)
                if name not in names:
                    os.remove(self.file(name))
            for name in names:
                if os.path.lexists(os.path.join(previous, name)):
                    os.replace(os.path.join(previous, name), self.file(name))
            shutil.rmtree(previous)  # (its manifest, and whatever else was left in it)
            self._replaced, self._restored = False, True

    def _replaced_names(self) -> list[str]:
        """The earlier run's files (.previous/'s manifest; an --overwrite of an earlier version kept none: what is
        there)."""
        previous = self.file(PREVIOUS)
        manifest = os.path.join(previous, REPLACED)
        if os.path.exists(manifest):
            try:
                return [str(name) for name in read_json_object(manifest).get("files", [])]
            except DataError:  # truncated by a kill in its write (atomic, so only an earlier version's): what is there
                pass
        return [name for name in os.listdir(previous) if not name.startswith(".")]  # (a run's files: no dot-files)

    def describe(self) -> str:
        """What the run directory holds now, and how to go on: for messages after a stop (it changes nothing)."""
        if not os.path.isdir(self.path):  # (made by this process, and gone again at its close: nothing was in it)
            return f"nothing was written ({self.path} is not there): run the same command to start again"
        if self._restored:
            return f"the new run completed no epoch, so {self.path} holds the earlier run again, as it was"
        if self._replaced and not self.started:  # (a stop from the watchdog, which puts nothing in order)
            return (
                f"the new run completed no epoch; the earlier run waits whole in {self.file(PREVIOUS)}, and the next "
                f"command in {self.path} puts it back"
            )
        if self.started:
            from bkd import resume

            try:
                kept = f"keeps epochs 0..{resume.load(self.file(STATE))['epoch'] - 1}"
            except DataError:
                kept = "keeps the last completed epoch"
            return f"{self.path} {kept}: run the same command with --resume to continue"
        return f"no epoch was completed, so {self.path} holds no result: run the same command to start again"

    def close(self) -> None:
        """Release the lock (putting back an --overwritten run whose replacement completed no epoch); a directory this
        process made and left empty goes."""
        if self._replaced and not self.started:
            self.restore_previous()
        if self._lock is not None:
            if self._created and os.listdir(self.path) == [".lock"]:  # refused before anything of the run was written
                shutil.rmtree(self.path)
            self._lock.close()
            self._lock = None


def recorded_progress(metrics: dict[str, Any]) -> tuple[int | None, int | None]:
    """(epochs completed, n_epoch) as a run's metrics.json records them, each None where it is not a whole number (a
    file of an unfinished or a hand-edited run): the evaluations and the launcher read a run's progress by this."""

    def whole(value: Any) -> int | None:
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    return whole(metrics.get("epochs_completed")), whole((metrics.get("config") or {}).get("n_epoch"))


def lock_held(path: str) -> bool:
    """True if another process holds an flock on `path`."""
    if not os.path.exists(path):
        return False
    with open_regular(path) as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in (errno.EAGAIN, errno.EACCES):
                return True
            raise
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


def check_writable(folder: str, fix: str) -> None:
    """One line (exit 4) if a file cannot be created in `folder`, ending with how to `fix` it."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".write_test.", dir=folder)  # (a new name: nothing there to block on)
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        raise RunDirError(f"cannot write to run directory {folder} ({err.strerror}); {fix}") from None
