"""Detection task: score a run's detection.npy against the true noise mask (spec section 5).

Prints the original's start-up lines and its five lines (number flagged, number truly
noisy, precision, recall, F-score), then ours, prefixed `[bkd] `.
"""
import os

import numpy as np

from data.setup import load_run_labels
from utils import checkpoint as ck
from utils import logfmt
from utils.cli import base_parser, parse
from utils.errors import DataError, run_cli
from utils.files import update_json
from utils.metrics import detection_scores
from utils.runtime import set_global_seeds


def load_detection(path, expected_len):
    if not os.path.exists(path):
        raise DataError(f"{path}: not found; train this run first (blind_knowledge_dist_training.py writes it)")
    try:
        flagged = np.load(path, allow_pickle=False)
    except Exception as err:
        raise DataError(f"{path}: unreadable .npy file ({err}); truncated or not written by this project") from None
    if flagged.dtype != np.bool_:
        raise DataError(f"{path}: holds {flagged.dtype} values; expected a boolean mask (True = label flagged noisy)")
    if flagged.shape != (expected_len,):
        raise DataError(f"{path}: shape {flagged.shape}, expected ({expected_len},): one flag per training image of the run")
    return flagged


def main(argv=None):
    args = parse(base_parser("Score the label-noise detection of a BKD run (precision, recall, F1)."), argv)
    set_global_seeds(args.seed)
    run_dir = ck.resolve_run_dir(args)
    # Needs no images: the training run already checked the file's clean labels against them.
    labels, subset, lines = load_run_labels(args, run_dir, val_ratio=0.0)
    for line in lines:
        print(line)
    noisy, clean = (labels.noisy, labels.clean) if subset is None else (labels.noisy[subset], labels.clean[subset])
    flagged = load_detection(os.path.join(run_dir, ck.DETECTION), len(noisy))
    s = detection_scores(flagged, noisy != clean)
    for line in logfmt.detection(s["flagged"], s["truly_noisy"], s["precision"], s["recall"], s["f1"]):
        print(line)
    print(logfmt.ours(f"{s['flagged']} of {len(flagged)} labels flagged, {s['truly_noisy']} truly noisy: precision "
                      f"{s['precision']:.4f}, recall {s['recall']:.4f}, F1 {s['f1']:.4f}"))
    update_json(os.path.join(run_dir, ck.METRICS), {"detection": s})


if __name__ == "__main__":
    run_cli(main)
