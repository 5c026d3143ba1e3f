"""BKD from Python: find the suspect labels of your own images in one call.

    from bkd import find_label_issues
    result = find_label_issues(images, labels, n_epoch=40, width=16)   # images (N, H, W, 3) uint8, labels (N,)
    result.ranked           # indices into images / labels, most suspect label first
    result.label_quality    # agreed probability of each given label (the ranking key), per image of result.positions
    result.suggested_label  # the label teacher and student agree on
    result.flagged          # Otsu group 4: BKD's decision that the label is wrong
    result.pred_probs       # (n, C) agreement probabilities at the split (for cleanlab.filter / cleanlab.rank)

The same training as `blind_knowledge_dist_training.py --dataset custom` with the same flags:
the keyword arguments are its flags by name (bkd.config.TrainConfig), with the same defaults,
checks, device choice, seed and determinism. Nothing is written unless `run_dir` is given; then
the run directory holds the usual outputs and a second call resumes or reuses it. The caller's
global random generators (random, numpy, torch) and signal handlers are left as they were.
"""
import os
from dataclasses import dataclass, fields

import numpy as np

from bkd import resume
from bkd import rundir as rd
from bkd.config import TrainConfig, check_config, custom_selection, resolve_computation
from bkd.engine import StopFlag
from bkd.utils.logfmt import quiet
from bkd.issues import rank_label_issues
from bkd.outputs import RunFiles
from bkd.run import Job, Saved, fit
from bkd.data.custom import from_arrays
from bkd.data.datasets import choose_images, custom_source
from bkd.utils.errors import UsageError
from bkd.utils.seeds import preserved_global_rng
from bkd.utils.devices import resolve_device


@dataclass
class LabelIssues:
    positions: np.ndarray  # indices into the caller's images of the images BKD used (all, in order, without subset)
    ranked: np.ndarray  # indices into the caller's images, most suspect first (ascending label_quality, ties by position)
    label_quality: np.ndarray  # agreed probability of each given label; this and the arrays below follow `positions`
    suggested_label: np.ndarray  # argmax of the agreement
    flagged: np.ndarray  # bool, Otsu group 4 (detection.npy)
    pred_probs: np.ndarray  # (n, C) agreement probabilities
    group: np.ndarray  # Otsu trust group 1 (most trusted) .. 4 (flagged)
    overfit_epoch: int  # None when the run found no peak and split its last epoch


def find_label_issues(images, labels, *, classes=None, ids=None, device="auto", run_dir=None, keep_image_size=False,
                      verbose=False, **flags):
    """Train BKD on (images, labels) and rank every label from most to least suspect; see the module docstring."""
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(flags) - known)
    if unknown:
        raise UsageError(f"find_label_issues: unknown argument(s) {', '.join(unknown)}; the training flags are "
                         f"{', '.join(sorted(known))}, device, run_dir, classes, ids, keep_image_size, verbose")
    config = TrainConfig(**flags)
    check_config(config)
    device = resolve_device(device)
    computation = resolve_computation(config, device)
    data = choose_images(custom_source(from_arrays(images, labels, classes, ids, keep_size=keep_image_size)), config.subset,
                         config.seed, config.val_ratio)
    job = Job(config, data, device, computation, print if verbose else quiet)
    with preserved_global_rng():  # the run seeds the global generators; the caller's come back as they were
        if run_dir is None:
            return _result(data, fit(job, stop=StopFlag()))
        return _in_run_dir(run_dir, job, custom_selection(keep_image_size))


def _result(data, state, split=None):
    split = split or state.split_result()
    p = np.asarray(split.label_prob)
    return LabelIssues(np.asarray(data.subset), np.asarray(data.subset)[rank_label_issues(p)], p, np.asarray(split.agreed),
                       np.asarray(split.detected), np.asarray(split.probs), np.asarray(split.groups), state.overfit_epoch)


def _in_run_dir(path, job, chosen):
    """With a run directory: resume it (the same data and arguments), write its files, read the result back."""
    run = rd.RunDir(path)
    identity = resume.identity(job, chosen)
    saved = None
    if os.path.exists(run.file(rd.STATE)):
        saved = resume.load(run.file(rd.STATE), resume.API)
        resume.check(saved, identity, run.file(rd.STATE), resume.API, job.log)
    run.open(resume=saved is not None, elsewhere="give another run_dir")
    try:
        files = RunFiles(run, job, identity, {"api": True, **identity["args"]})
        state = fit(job, [files], resume=saved and Saved(run.file(rd.STATE), saved), stop=StopFlag())
    finally:
        run.close()
    split = state.split_result()
    if split.probs is None:  # a resume state of an earlier version: the split's files hold the result
        split = rd.read_split(run, split)
    return _result(job.data, state, split)
