"""BKD from Python: find the suspect labels of your own images in one call.

    from bkd import find_label_issues
    result = find_label_issues(images, labels, n_epoch=40, width=16)   # images (N, H, W, 3) uint8, labels (N,)
    result.ranked           # positions, most suspect label first
    result.label_quality    # agreed probability of each given label (the ranking key)
    result.suggested_label  # the label teacher and student agree on
    result.flagged          # Otsu group 4: BKD's decision that the label is wrong
    result.pred_probs       # (N, C) agreement probabilities at the split (for cleanlab.filter / cleanlab.rank)

The same training as `blind_knowledge_dist_training.py --dataset custom` with the same flags:
the keyword arguments are its flags by name (bkd.config.TrainConfig, plus val_ratio and subset),
the same defaults, device choice, seed and determinism. Nothing is written unless `run_dir` is
given; then the run directory holds the usual outputs and a second call resumes or reuses it.
"""
import os
from dataclasses import asdict, dataclass, fields

import numpy as np

from bkd.config import TrainConfig, check_config
from bkd.engine import StopFlag
from bkd.issues import rank_label_issues
from bkd.outputs import Listeners, Results, RunFiles
from bkd.run import fit
from data.custom import from_arrays
from data.setup import check_same_data, choose_images, custom_source
from utils import checkpoint as ck
from utils.errors import UsageError
from utils.runtime import machine_info, resolve_device


@dataclass
class LabelIssues:
    ranked: np.ndarray  # positions, most suspect first (ascending label_quality, ties by position)
    label_quality: np.ndarray  # agreed probability of each given label
    suggested_label: np.ndarray  # argmax of the agreement
    flagged: np.ndarray  # bool, Otsu group 4 (detection.npy)
    pred_probs: np.ndarray  # (N, C) agreement probabilities
    group: np.ndarray  # Otsu trust group 1 (most trusted) .. 4 (flagged)
    overfit_epoch: int  # None when the run found no peak and split its last epoch


def find_label_issues(images, labels, *, classes=None, ids=None, val_ratio=0.1, subset=0, device="auto", run_dir=None,
                      verbose=False, **flags):
    """Train BKD on (images, labels) and rank every label from most to least suspect; see the module docstring."""
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(flags) - known)
    if unknown:
        raise UsageError(f"find_label_issues: unknown argument(s) {', '.join(unknown)}; the training flags are "
                         f"{', '.join(sorted(known))}, val_ratio, subset, device, run_dir, classes, ids")
    config = TrainConfig(**flags)
    check_config(config)
    data = choose_images(custom_source(from_arrays(images, labels, classes, ids)), subset, config.seed, val_ratio)
    device = resolve_device(device)
    log = print if verbose else _quiet
    results = Results()
    if run_dir is None:
        state = fit(config, data, device, results, log=log, stop=StopFlag())
        return _from_split(results.event, state)
    return _in_run_dir(run_dir, config, data, device, results, log, dict(asdict(config), val_ratio=val_ratio, subset=subset))


def _quiet(*args):
    pass


def _from_split(event, state):
    p = np.asarray(event.label_prob)
    return LabelIssues(rank_label_issues(p), p, np.asarray(event.agreed), np.asarray(event.detected),
                       np.asarray(event.probs), np.asarray(state.full_groups), state.overfit_epoch)


def _in_run_dir(path, config, data, device, results, log, flags):
    """With a run directory: resume it (the same data and flags), write its files, read the result back from them."""
    run = ck.RunDir(path)
    identity = {"args": flags, "data": data.fingerprint()}
    resume = None
    if os.path.exists(run.file(ck.STATE)):
        import torch

        resume = torch.load(run.file(ck.STATE), map_location="cpu", weights_only=True)
        if resume.get("args") != flags:
            raise UsageError(f"{path} holds a run with other settings ({resume.get('args')}); give another run_dir")
        check_same_data(resume.get("data") or {}, identity["data"])
    run.open(resume=resume is not None)
    try:
        files = RunFiles(run, data, config, False, identity, dict(flags), machine_info(), log)
        state = fit(config, data, device, Listeners(files, results), log=log, resume=resume,
                    resume_name=run.file(ck.STATE), stop=StopFlag())
    finally:
        run.close()
    p = np.load(run.file(ck.AGREEMENT))
    groups = np.asarray(state.full_groups)
    agreed = np.asarray(results.event.agreed) if results.event is not None else _agreed_from_csv(run.file(ck.LABEL_ISSUES), len(p))
    return LabelIssues(rank_label_issues(p), p, agreed, np.load(run.file(ck.DETECTION)), np.load(run.file(ck.PRED_PROBS)),
                       groups, state.overfit_epoch)


def _agreed_from_csv(path, n):
    from bkd.issues import read_label_issues

    agreed = np.zeros(n, dtype=np.int64)
    for row in read_label_issues(path):
        agreed[row["position"]] = row["agreed_label"]
    return agreed
