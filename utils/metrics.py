"""Scores of the two challenge tasks."""
import numpy as np
from sklearn.metrics import f1_score, precision_score, recall_score


def detection_scores(flagged, truly_noisy):
    """Precision, recall and F1 of the flagged set against the true noise mask (noisy label != clean)."""
    flagged, truly_noisy = np.asarray(flagged, bool), np.asarray(truly_noisy, bool)
    kw = {"zero_division": 0}
    return {
        "flagged": int(flagged.sum()),
        "truly_noisy": int(truly_noisy.sum()),
        "precision": float(precision_score(truly_noisy, flagged, **kw)),
        "recall": float(recall_score(truly_noisy, flagged, **kw)),
        "f1": float(f1_score(truly_noisy, flagged, **kw)),
    }
