"""Model checkpoints in the original's format ({'state_dict', 'epoch'}, plus the architecture),
and the run directory: its name, its lock, and what counts as an earlier run in it."""
import errno
import fcntl
import os

from utils.errors import DataError, RunDirError, first_line
from utils.files import save_torch

TEACHER, STUDENT = "teacher.pth.tar", "student.pth.tar"  # best by validation (the original's names)
TEACHER_LAST, STUDENT_LAST = "teacher_last.pth.tar", "student_last.pth.tar"  # the last epoch
STATE = "state.pth.tar"  # resumable state, rewritten after every epoch
DETECTION = "detection.npy"
AGREEMENT = "agreement.npy"  # the full-set statistic pA[y] that detection.npy splits
LABEL_ISSUES = "label_issues.csv"  # every training image, most suspect label first
METRICS = "metrics.json"
SUBSET = "train_subset.npy"  # with --subset: the indices of the training images the run uses
RUN_ARTEFACTS = (STATE, TEACHER, STUDENT, TEACHER_LAST, STUDENT_LAST, DETECTION, AGREEMENT, LABEL_ISSUES, METRICS,
                 SUBSET)


def run_dir_name(dataset, noise_type, seed, preset="default"):
    name = f"{dataset}_{noise_type}_seed_{seed}"
    return name if preset in (None, "default") else f"{name}_{preset}"


def resolve_run_dir(args):
    if getattr(args, "run_dir", None):
        return args.run_dir
    # custom data: named after its file or folder, e.g. results/custom_pets_seed_0
    labels = args.noise_type if args.dataset != "custom" else _stem(args.data_file or "custom.npz")
    return os.path.join(args.results_dir, run_dir_name(args.dataset, labels, args.seed, args.preset))


def _stem(path):
    return os.path.splitext(os.path.basename(os.path.normpath(path)))[0]


def save_model(model, path, epoch, num_classes, width):
    save_torch({"state_dict": model.state_dict(), "epoch": epoch, "num_classes": num_classes, "width": width}, path)


def load_model(path, build):
    """Load a checkpoint written by save_model into `build(num_classes, width)`; clear errors on bad files."""
    import torch  # here, so that the launcher's bookkeeping imports this module without torch

    if not os.path.exists(path):
        raise DataError(f"{path}: checkpoint not found; train this run first (blind_knowledge_dist_training.py)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise DataError(f"{path}: unreadable checkpoint ({first_line(err)}); truncated or not a checkpoint") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise DataError(f"{path}: not a model checkpoint (no 'state_dict')")
    num_classes = ckpt.get("num_classes") or ckpt["state_dict"]["linear.weight"].shape[0]
    width = ckpt.get("width") or ckpt["state_dict"]["conv1.weight"].shape[0]
    model = build(num_classes, width)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        first = first_line(err)
        raise DataError(f"{path}: weights do not fit PreResNet18(num_classes={num_classes}, width={width}) ({first})") from None
    return model, ckpt


class RunDir:
    """The run directory, locked for the lifetime of a training process.

    The lock is an flock on `.lock`, which the kernel releases when the process
    dies, so a killed run never leaves it stuck.
    """

    def __init__(self, path):
        self.path = path
        self._lock = None

    def file(self, name):
        return os.path.join(self.path, name)

    def has(self, name):
        return os.path.exists(self.file(name))

    def existing_artefacts(self):
        return [name for name in RUN_ARTEFACTS if os.path.exists(self.file(name))]

    def open(self, resume=False, overwrite=False):
        try:
            os.makedirs(self.path, exist_ok=True)
            probe = self.file(".write_test")
            with open(probe, "w"):
                pass
            os.remove(probe)
        except OSError as err:
            raise RunDirError(f"cannot write to run directory {self.path} ({err.strerror}); pick another --results_dir") from None
        self._lock = open(self.file(".lock"), "a+")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in (errno.EAGAIN, errno.EACCES):
                raise RunDirError(f"{self.path} is in use by another training process; wait for it or use another --seed/--results_dir") from None
            raise
        for name in os.listdir(self.path):  # temporary files of a writer killed mid-save (we hold the lock)
            if name.startswith(".") and name.endswith(".tmp"):
                os.remove(self.file(name))
        existing = self.existing_artefacts()
        if resume:
            if not os.path.exists(self.file(STATE)):
                raise RunDirError(f"nothing to resume in {self.path} (no {STATE}); start the run without --resume")
        elif existing and not overwrite:
            raise RunDirError(
                f"{self.path} already holds a run ({', '.join(existing)}); pass --resume to continue it, "
                "--overwrite to replace it, or another --results_dir"
            )
        return self

    def clear(self):
        """Remove an earlier run's files (--overwrite); called only once the new run is ready to start."""
        for name in self.existing_artefacts():
            os.remove(self.file(name))

    def close(self):
        if self._lock is not None:
            self._lock.close()
            self._lock = None
