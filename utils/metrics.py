"""Scores of the two challenge tasks."""

from typing import Any

import numpy as np
from numpy.typing import ArrayLike


def detection_scores(flagged: ArrayLike, truly_noisy: ArrayLike) -> dict[str, Any]:
    """Precision, recall and F-score of the flagged set against the true noise mask (noisy label != clean).

    The original's arithmetic (so its printed digits are reproduced): precision = hits / flagged,
    recall = hits / truly noisy, F = 2 P R / (P + R); 0.0 where the original divides by zero.
    """
    flagged, truly_noisy = np.asarray(flagged, bool), np.asarray(truly_noisy, bool)
    hits, n_flagged, n_noisy = np.sum(flagged * truly_noisy), np.sum(flagged), np.sum(truly_noisy)
    precision = float(hits / n_flagged) if n_flagged else 0.0
    recall = float(hits / n_noisy) if n_noisy else 0.0
    f1 = 2.0 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"flagged": int(n_flagged), "truly_noisy": int(n_noisy), "precision": precision, "recall": recall, "f1": f1}


PRECISION_AT = (100, 500, 1000)


def ranking_scores(label_prob: ArrayLike, truly_noisy: ArrayLike) -> dict[str, float | None]:
    """How well a ranking by the agreed probability of the given label (lowest first) finds the truly noisy labels.

    AUROC and average precision (scikit-learn) of the suspicion 1 - p, precision among the k most
    suspect labels, and the floor that any flagged set must beat: the F1 of flagging every label,
    2 r / (1 + r) at noise rate r.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    p, truly_noisy = np.asarray(label_prob, dtype=np.float64), np.asarray(truly_noisy, bool)
    rate = float(truly_noisy.mean()) if len(truly_noisy) else 0.0
    both = 0 < truly_noisy.sum() < len(truly_noisy)  # AUROC needs both kinds of labels
    order = np.argsort(p, kind="stable")
    scores: dict[str, float | None] = {
        "noise_rate": rate,
        "flag_all_f1": 2 * rate / (1 + rate) if rate else 0.0,
        "auroc": float(roc_auc_score(truly_noisy, -p)) if both else None,
        "average_precision": float(average_precision_score(truly_noisy, -p)) if both else None,
    }
    for k in PRECISION_AT:
        scores[f"precision_at_{k}"] = float(truly_noisy[order[:k]].mean()) if len(p) >= k else None
    return scores


def ranking_line(scores: dict[str, Any]) -> str:
    """The ranking scores as one readable sentence (for a `[bkd] ` line)."""

    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    at = ", ".join(f"{k} {fmt(scores[f'precision_at_{k}'])}" for k in PRECISION_AT)
    return (
        f"ranking by agreed probability: AUROC {fmt(scores['auroc'])}, "
        f"average precision {fmt(scores['average_precision'])}, "
        f"precision at top {at}; noise rate {scores['noise_rate']:.3f}, so flagging every label scores F1 "
        f"{scores['flag_all_f1']:.3f} (the floor)"
    )
