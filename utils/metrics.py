"""Scores of the two challenge tasks."""
import numpy as np


def detection_scores(flagged, truly_noisy):
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
