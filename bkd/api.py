"""BKD from Python: find the suspect labels of your own images in one call.

    from bkd import find_label_issues
    result = find_label_issues(images, labels, n_epoch=40, width=16)   # images (N, H, W, 3) uint8, labels (N,)
    result.ranked           # indices into images / labels, most suspect label first
    result.label_quality    # agreed probability of each given label (the ranking key), per image of result.positions
    result.suggested_label  # the label teacher and student agree on
    result.flagged          # Otsu group 4: BKD's decision that the label is wrong
    result.pred_probs       # (n, C) agreement probabilities at the split (for cleanlab.filter / cleanlab.rank)

The same training as `blind_knowledge_dist_training.py --dataset custom` with the same flags, loaded by the same
function (bkd.data.datasets.input_dataset, from a DataSelection made of the arrays): the keyword arguments are its
flags by name (bkd.config.TrainConfig), with the same defaults, checks, device choice, seed and determinism. Nothing
is written unless `run_dir` is given; then the run directory holds the usual outputs and a second call resumes or
reuses it. The caller's global random generators (random, numpy, torch) and signal handlers are left as they were.
"""

import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from bkd import resume, review
from bkd import rundir as rd
from bkd.config import KINDS, TrainConfig, check_config, of_type, resolve_computation
from bkd.data.custom import from_arrays
from bkd.data.datasets import CUSTOM, DataSelection, RunData, input_dataset
from bkd.issues import rank_label_issues
from bkd.outputs import RunFiles
from bkd.run import Job, Saved, fit
from bkd.state import MethodState
from bkd.utils.devices import resolve_device
from bkd.utils.errors import DataError, UsageError
from bkd.utils.logfmt import quiet
from bkd.utils.seeds import preserved_global_rng
from bkd.utils.stops import StopFlag


@dataclass
class LabelIssues:
    """What find_label_issues found: every array but `ranked` has one entry per image of `positions`, in that order.

    Attributes
    ----------
    positions : (n,) int ndarray
        Indices into the caller's images of the images BKD used (all of them, in order, unless `subset` was given).
    ranked : (n,) int ndarray
        Indices into the caller's images, most suspect label first (ascending `label_quality`, ties in the images'
        order): the order of label_issues.csv.
    label_quality : (n,) float32 ndarray
        The probability teacher and student agree on the given label (pA[y]).
    suggested_label : (n,) int ndarray
        The label teacher and student agree on (argmax of the agreement).
    flagged : (n,) bool ndarray
        Otsu group 4 of the agreement: BKD's decision that the given label is wrong (detection.npy).
    pred_probs : (n, C) float32 ndarray
        The agreement probabilities, for cleanlab's filter and rank functions.
    group : (n,) int ndarray
        The Otsu trust group, 1 (most trusted) to 4 (flagged).
    overfit_epoch : int or None
        The overfitting epoch (0-based), whose statistics were split, or None where the run found no peak of the
        student's confidence and split its last epoch.
    split_epoch : int
        The epoch whose statistics were split.
    otsu : dict of str to float
        The Otsu split of the agreement that made the groups: threshold, mu1 and mu2 (the two sides' means).
    """

    positions: np.ndarray
    ranked: np.ndarray
    label_quality: np.ndarray
    suggested_label: np.ndarray
    flagged: np.ndarray
    pred_probs: np.ndarray
    group: np.ndarray
    overfit_epoch: int | None
    split_epoch: int
    otsu: dict[str, float]

    def write_review(
        self,
        path: str | os.PathLike[str],
        images: np.ndarray | Sequence[np.ndarray],
        labels: np.ndarray | Sequence[int],
        classes: Sequence[str] | None = None,
        ids: Sequence[str] | None = None,
        top: int = review.TOP,
    ) -> str:
        """Write the review page of these label issues over the caller's images (docs/custom-data.md).

        Parameters
        ----------
        path : str or os.PathLike
            The page's file (review.html): one self-contained file, which opens in a browser with nothing to install.
        images, labels : the arrays given to find_label_issues
            Indexed by `positions`: each card shows its image and its given label.
        classes : sequence of C str, optional
            Class names (default "0".."C-1").
        ids : sequence of N str, optional
            Identifiers of the images, e.g. file names (default: their positions); the page shows them, and its
            exported corrections name the images by them.
        top : int, default 1000
            The most suspect images shown.

        Returns
        -------
        str
            The page's path.
        """
        num_classes = self.pred_probs.shape[1]
        names = [str(c) for c in (classes if classes is not None else range(num_classes))]
        given = np.asarray(labels)
        rows = []
        for rank, i in enumerate(rank_label_issues(self.label_quality), 1):
            position = int(self.positions[i])
            rows.append(
                {
                    "rank": rank,
                    "position": position,
                    "id": str(ids[position]) if ids is not None else str(position),
                    "given_label": int(given[position]),
                    "given_prob": float(self.label_quality[i]),
                    "agreed_label": int(self.suggested_label[i]),
                    "group": int(self.group[i]),
                    "flagged": int(self.flagged[i]),
                }
            )
        header = review.header_of("find_label_issues", self.overfit_epoch, self.split_epoch, self.otsu, rows, None)
        html = review.page(rows, lambda row: np.asarray(images[row["position"]]), names, header, top=top)
        review.write(os.fspath(path), html)
        return os.fspath(path)


def find_label_issues(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    classes: Sequence[str] | None = None,
    ids: Sequence[str] | None = None,
    device: str = "auto",
    run_dir: str | os.PathLike[str] | None = None,
    verbose: bool = False,
    **flags: Any,
) -> LabelIssues:
    """Train BKD on (images, labels) and rank every label from most to least suspect.

    Parameters
    ----------
    images : (N, H, W, 3) uint8 ndarray, or a list of (H, W, 3) uint8 arrays
        RGB images of one size. Images smaller than 32 pixels are resized to 32 unless keep_image_size=True.
    labels : (N,) int array-like
        The given label of each image, 0..C-1.
    classes : sequence of C str, optional
        Class names (default "0".."C-1"); label_issues.csv shows them.
    ids : sequence of N str, optional
        Identifiers of the images, e.g. file names (default: their positions); label_issues.csv shows them.
    device : str, default "auto"
        "auto" (CUDA when present, else the CPU), "cpu", "cuda" or "cuda:N".
    run_dir : str or os.PathLike, optional
        A run directory to write the usual outputs into (default None: nothing is written). A second call with the
        same data and arguments resumes an unfinished run there, or reads a finished one back.
    verbose : bool, default False
        Print the training's log lines.
    **flags
        The training script's flags by name, with its defaults: bkd.config.TrainConfig's fields, e.g. n_epoch (300),
        width (64), lr_step (150), batch_size (128), seed (0), val_ratio (0.1), subset (0: all), and keep_image_size
        (False: images smaller than 32 pixels are resized to 32). A NumPy integer or float is taken as a number. And,
        as the training script's `--corrections`: corrections (a file: CSV with `id` or `position`, `new_label`,
        optionally `given_label`), applied before training: new labels, and images removed (`remove`); the review
        page's Export writes one (LabelIssues.write_review), and resuming a run_dir with another file is refused.

    Returns
    -------
    LabelIssues
        The ranking, the suggested labels, BKD's decisions and the agreement probabilities.

    Raises
    ------
    bkd.utils.errors.UsageError
        An unknown argument, or a value of the wrong type or out of range (one line naming it and the fix).
    bkd.utils.errors.DataError
        Images or labels that cannot be trained on, or a run_dir of other data.
    bkd.utils.errors.RunDirError
        A run_dir in use, or not writable.
    """
    # (the training script's flags of those names: not TrainConfig fields)
    keep_image_size, corrections = flags.pop("keep_image_size", False), flags.pop("corrections", None)
    for name, value, kind in (
        ("keep_image_size", keep_image_size, bool),
        ("verbose", verbose, bool),
        ("device", device, str),
    ):
        if not of_type(value, kind):
            raise UsageError(f"{name}={value!r} must be {KINDS[kind]}, not {type(value).__name__}")
    if corrections is not None and not isinstance(corrections, (str, os.PathLike)):
        raise UsageError(f"corrections={corrections!r} must be a file's path, not {type(corrections).__name__}")
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(flags) - known)
    if unknown:
        raise UsageError(
            f"find_label_issues: unknown argument(s) {', '.join(unknown)}; the training flags are "
            f"{', '.join(sorted(known | {'keep_image_size', 'corrections'}))}, besides device, run_dir, classes, ids, "
            "verbose"
        )
    # (a NumPy number as Python's)
    config = TrainConfig(**{k: v.item() if isinstance(v, np.generic) else v for k, v in flags.items()})
    check_config(config)
    where = resolve_device(device)
    selection = DataSelection(
        dataset=CUSTOM,
        keep_image_size=keep_image_size,
        arrays=from_arrays(images, labels, classes, ids, keep_size=keep_image_size),
        corrections=None if corrections is None else os.fspath(corrections),
    )
    data = input_dataset(selection, config)
    job = Job(config, data, where, resolve_computation(config, where), print if verbose else quiet)
    with preserved_global_rng():  # the run seeds the global generators; the caller's come back as they were
        if run_dir is None:
            return _result(data, fit(job, stop=StopFlag()))
        return _in_run_dir(os.fspath(run_dir), job, selection)


def _result(data: RunData, state: MethodState) -> LabelIssues:
    split = state.split_result()
    assert split is not None  # (every run ends split: at its overfitting epoch, or at its last)
    if split.probs is None:  # a finished run of an earlier version, whose resume state kept no agreement probabilities
        raise DataError(
            "the run directory holds a run of an earlier version of this project, which kept no agreement "
            "probabilities; give another run_dir (or train this one again)"
        )
    p = np.asarray(split.label_prob)
    assert state.full_split is not None  # (made with the split)
    return LabelIssues(
        np.asarray(data.positions),
        np.asarray(data.positions)[rank_label_issues(p)],
        p,
        np.asarray(split.agreed),
        np.asarray(split.detected),
        np.asarray(split.probs),
        np.asarray(split.groups),
        state.overfit_epoch,
        split.epoch,
        dict(state.full_split),
    )


def _in_run_dir(path: str, job: Job, selection: DataSelection) -> LabelIssues:
    """With a run directory: resume it (the same data and arguments), write its files, read the result back."""
    run = rd.RunDir(path)
    identity = resume.identity(job, selection)
    saved = None
    if os.path.exists(run.file(rd.STATE)):
        saved = resume.load(run.file(rd.STATE), resume.API)
        resume.check(saved, identity, run.file(rd.STATE), resume.API, job.log)
    run.open(resume=saved is not None, elsewhere="give another run_dir")
    try:
        files = RunFiles(run, job, identity, {"api": True, **identity["args"]})
        state = fit(job, [files], resume=Saved(run.file(rd.STATE), saved) if saved else None, stop=StopFlag())
    finally:
        run.close()
    return _result(job.data, state)
