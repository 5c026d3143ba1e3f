"""Detection task: score a run's detection.npy against the true noise mask (spec section 5)."""
import os

import numpy as np

from data.labels import load_noisy_labels
from data.setup import saved_subset
from utils import checkpoint as ck
from utils.cli import base_parser, parse
from utils.errors import DataError, run_cli
from utils.files import update_json
from utils.metrics import detection_scores


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
    run_dir = ck.resolve_run_dir(args)
    # Needs no images: the training run already checked the file's clean labels against them.
    noisy, clean = load_noisy_labels(args.dataset, args.noise_type, args.noise_path, download=not args.no_download)
    subset = saved_subset(run_dir)
    if subset is not None:
        noisy, clean = noisy[subset], clean[subset]
    flagged = load_detection(os.path.join(run_dir, ck.DETECTION), len(noisy))
    scores = detection_scores(flagged, noisy != clean)
    print(f"Number of flagged samples: {scores['flagged']}")
    print(f"Number of truly noisy samples: {scores['truly_noisy']}")
    print(f"Precision: {scores['precision']:.4f}")
    print(f"Recall: {scores['recall']:.4f}")
    print(f"F1: {scores['f1']:.4f}")
    update_json(os.path.join(run_dir, ck.METRICS), {"detection": scores})


if __name__ == "__main__":
    run_cli(main)
