"""Detection task: score a run's detection.npy (docs/method.md, 'The split'), or summarise it for data without clean
labels.

CIFAR-N: the original's start-up lines and its five lines (number flagged, number truly noisy,
precision, recall, F-score), then ours, prefixed `[bkd] `.
Custom data: the number flagged and the share of each class flagged; with --true_labels (a
.npy of correct labels, -1 where not audited) also the original's five lines over the audited labels.
"""

if __name__ == "__main__":  # Ctrl-C while the libraries load: one line, not a traceback (utils/errors.py)
    from bkd.utils.stops import interrupt_quietly_while_starting

    interrupt_quietly_while_starting()

import argparse
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from bkd import rundir as rd
from bkd.evaluations import check_split, evaluated_data, evaluating
from bkd.utils import logfmt
from bkd.utils.errors import DataError, first_line, run_cli
from bkd.utils.files import open_regular, update_json
from bkd.utils.metrics import detection_scores, ranking_line, ranking_scores
from bkd.utils.seeds import set_global_seeds
from bkd.utils.stops import stop_on_signals
from flags import Parser, base_parser, data_selection, parse, run_dir_path, training_config


def build_parser() -> Parser:
    p = base_parser("Score the label-noise detection of a BKD run (precision, recall, F1).")
    p.add_argument(
        "--true_labels",
        type=str,
        default=None,
        help="--dataset custom: .npy of correct labels, one per training image, -1 where not audited",
    )
    return p


def load_detection(path: str, expected_len: int) -> np.ndarray:
    """detection.npy, checked: one boolean per image of the run."""
    if not os.path.exists(path):
        raise DataError(f"{path}: not found; train this run first (blind_knowledge_dist_training.py writes it)")
    try:
        with open_regular(path, "rb") as fh:
            flagged = np.load(fh, allow_pickle=False)
    except DataError:
        raise
    except Exception as err:
        raise DataError(
            f"{path}: unreadable .npy file ({first_line(err)}); truncated or not written by this project"
        ) from None
    if flagged.dtype != np.bool_:
        raise DataError(f"{path}: holds {flagged.dtype} values; expected a boolean mask (True = label flagged noisy)")
    if flagged.shape != (expected_len,):
        raise DataError(
            f"{path}: shape {flagged.shape}, expected ({expected_len},): one flag per training image of the run"
        )
    return flagged


def load_true_labels(path: str, given: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Audited labels: (mask of audited images, truly noisy among them)."""
    try:
        with open_regular(path, "rb") as fh:
            truth = np.load(fh, allow_pickle=False)
            archive = not isinstance(truth, np.ndarray)  # an .npz archive
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"--true_labels {path}: not a readable .npy file ({first_line(err)})") from None
    if archive:
        raise DataError(
            f"--true_labels {path}: an .npz archive; save the labels alone with np.save(<file>.npy, labels)"
        )
    if truth.shape != given.shape or not np.issubdtype(truth.dtype, np.integer):
        raise DataError(
            f"--true_labels {path}: needs one integer label per training image ({given.shape}), got "
            f"{truth.dtype} {truth.shape}"
        )
    if ((truth < -1) | (truth >= num_classes)).any():
        raise DataError(f"--true_labels {path}: labels must be in 0..{num_classes - 1}, or -1 for not audited")
    audited = truth >= 0
    return audited, given[audited] != truth[audited]


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(build_parser(), argv)
    config = training_config(args)
    set_global_seeds(config.seed)
    run_dir = run_dir_path(args)
    stop_on_signals(
        f"detection.py stopped before writing its result ({os.path.join(run_dir, rd.METRICS)} is as it was); "
        "run it again"
    )
    with evaluating(run_dir, needs=(rd.DETECTION,)) as metrics:
        score(args, run_dir, metrics)


def score(args: argparse.Namespace, run_dir: str, metrics: dict[str, Any]) -> None:
    """Score (or, without clean labels, summarise) the run's detection into metrics.json."""
    check_split(run_dir, metrics)
    data = evaluated_data(data_selection(args), training_config(args), run_dir, metrics, images=False)
    flagged = load_detection(os.path.join(run_dir, rd.DETECTION), len(data.labels))
    label_prob = load_agreement(os.path.join(run_dir, rd.AGREEMENT), len(data.labels))
    truly_noisy, scope = data.truly_noisy, "labels"
    if truly_noisy is None:
        summary = per_class(flagged, data.labels, data.classes)
        update_json(os.path.join(run_dir, rd.METRICS), {"flagged": summary})
        if args.true_labels is None:
            return
        audited, truly_noisy = load_true_labels(args.true_labels, data.labels, data.info["num_classes"])
        flagged, scope = flagged[audited], f"audited labels ({int(audited.sum())} of {len(audited)})"
        label_prob = None if label_prob is None else label_prob[audited]
    s = detection_scores(flagged, truly_noisy)
    for line in logfmt.detection(s["flagged"], s["truly_noisy"], s["precision"], s["recall"], s["f1"]):
        print(line)
    print(
        logfmt.ours(
            f"{s['flagged']} of {len(flagged)} {scope} flagged, {s['truly_noisy']} truly noisy: precision "
            f"{s['precision']:.4f}, recall {s['recall']:.4f}, F1 {s['f1']:.4f}"
        )
    )
    if label_prob is not None:  # the ranking behind label_issues.csv, and the floor a flagged set must beat
        s.update(ranking_scores(label_prob, truly_noisy))
        print(logfmt.ours(ranking_line(s)))
    update_json(os.path.join(run_dir, rd.METRICS), {"detection": s})


def load_agreement(path: str, expected_len: int) -> np.ndarray | None:
    """agreement.npy (the ranking statistic), or None with a [bkd] notice when the run has none usable."""
    try:
        with open_regular(path, "rb") as fh:
            label_prob = np.load(fh, allow_pickle=False)
    except Exception as err:  # (a damaged or missing file, or no regular file: said in the line)
        print(logfmt.ours(f"{rd.AGREEMENT} not usable ({first_line(err)}): no ranking scores"))
        return None
    if label_prob.shape != (expected_len,):
        print(logfmt.ours(f"{rd.AGREEMENT} has shape {label_prob.shape}, not ({expected_len},): no ranking scores"))
        return None
    return label_prob


def per_class(flagged: np.ndarray, given: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Print and return how many labels are flagged, overall and per given class."""
    print(
        logfmt.ours(
            f"{int(flagged.sum())} of {len(flagged)} labels flagged as noisy ({flagged.mean():.1%}); "
            f"most suspect first in {rd.LABEL_ISSUES}"
        )
    )
    rows = []
    for c, name in enumerate(classes):
        mine = given == c
        k, n = int(flagged[mine].sum()), int(mine.sum())
        rows.append({"class": c, "name": name, "flagged": k, "images": n})
        print(logfmt.ours(f"class {c} ({name}): {k} of {n} flagged ({k / max(n, 1):.1%})"))
    return {"flagged": int(flagged.sum()), "images": len(flagged), "per_class": rows}


if __name__ == "__main__":
    run_cli(main)
