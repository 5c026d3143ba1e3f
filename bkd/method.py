"""The pieces of Blind Knowledge Distillation (spec section 4), as small pure functions.

Each function is one idea of the paper; the training engine only wires them.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F

OTSU_BINS = 1000
OTSU_VAR_FLOOR = 1e-5
OTSU_EMPTY_SCORE = -1e7


# Blind compensation loss: teacher/student logit distance on every class but the labelled one.
def compensation_loss(teacher_logits, student_logits, labels):
    """sum_{b, c != y_b} (zT - zS)^2 / (B*C - 1); neither side is detached."""
    batch, classes = teacher_logits.shape
    keep = torch.ones_like(teacher_logits).scatter_(1, labels[:, None], 0.0)
    return ((teacher_logits - student_logits) ** 2 * keep).sum() / (batch * classes - 1)


# Agreement of teacher and student: normalised product of their class probabilities.
def agreement(teacher_probs, student_probs):
    joint = teacher_probs * student_probs
    return joint / joint.sum(dim=1, keepdim=True)


# Prediction everywhere (validation, test, learning.py): argmax of the agreement.
def predict(teacher_logits, student_logits):
    return agreement(teacher_logits.softmax(1), student_logits.softmax(1)).argmax(1)


def label_probability(probs, labels):
    """probs[b, y_b]: the probability a distribution gives to the given label."""
    return probs.gather(1, labels[:, None]).squeeze(1)


# Overfitting epoch: first epoch whose mean top student probability is a strict peak over +-2 epochs.
def find_overfitting_epoch(mean_top_probs):
    """Index i in 2..len-3 with m_i > m_{i-2}, m_{i-1}, m_{i+1}, m_{i+2}; None with < 6 values or no peak."""
    m = list(mean_top_probs)
    if len(m) < 6:
        return None
    for i in range(2, len(m) - 2):
        if all(m[i] > m[j] for j in (i - 2, i - 1, i + 1, i + 2)):
            return i
    return None


# Otsu split (the paper's variant) of the agreed label probability into trust groups.
def otsu_split(values):
    """Return dict(threshold, mu1, mu2, sigma1, sigma2, score) for values in [0, 1].

    Histogram with 1000 bins on [0, 1]; for each cut s in 2..997 the two sides
    are summarised by the count-weighted mean and standard deviation (variance
    floored at 1e-5) of the bins' left edges k/1000; the score is
    (n1 (mu1-mu)^2 + n2 (mu2-mu)^2) / (n1 sigma1 + n2 sigma2) with mu the plain
    mean of the values, and -1e7 when a side is empty. The first best cut wins.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0 or not np.all(np.isfinite(values)):
        raise ValueError("otsu_split needs a non-empty array of finite values")
    counts, _ = np.histogram(values, bins=OTSU_BINS, range=(0.0, 1.0))
    counts = counts.astype(np.float64)
    edges = np.arange(OTSU_BINS, dtype=np.float64) / OTSU_BINS
    mu = values.mean()
    # Prefix sums give both sides of every cut at once; cut s puts bins [0, s) below.
    c0 = np.concatenate([[0.0], np.cumsum(counts)])
    c1 = np.concatenate([[0.0], np.cumsum(counts * edges)])
    c2 = np.concatenate([[0.0], np.cumsum(counts * edges**2)])
    cuts = np.arange(2, OTSU_BINS - 2)  # 2..997
    n1, n2 = c0[cuts], c0[-1] - c0[cuts]
    s1, s2 = c1[cuts], c1[-1] - c1[cuts]
    q1, q2 = c2[cuts], c2[-1] - c2[cuts]
    with np.errstate(divide="ignore", invalid="ignore"):
        mu1, mu2 = s1 / n1, s2 / n2
        var1 = np.maximum(q1 / n1 - mu1**2, OTSU_VAR_FLOOR)
        var2 = np.maximum(q2 / n2 - mu2**2, OTSU_VAR_FLOOR)
        sigma1, sigma2 = np.sqrt(var1), np.sqrt(var2)
        score = (n1 * (mu1 - mu) ** 2 + n2 * (mu2 - mu) ** 2) / (n1 * sigma1 + n2 * sigma2)
    score = np.where((n1 == 0) | (n2 == 0), OTSU_EMPTY_SCORE, score)
    best = int(np.argmax(score))
    return {
        "threshold": float(cuts[best] / OTSU_BINS),
        "mu1": float(mu1[best]) if n1[best] else math.nan,
        "mu2": float(mu2[best]) if n2[best] else math.nan,
        "sigma1": float(sigma1[best]) if n1[best] else math.nan,
        "sigma2": float(sigma2[best]) if n2[best] else math.nan,
        "score": float(score[best]),
    }


# Trust groups from the split: G1 most trusted ... G4 least trusted (G4 = flagged as noisy).
def assign_groups(values, split):
    """Array of group ids 1..4: G4 = p < mu1, G3 = p < t, G1 = p >= mu2, G2 = the rest (p >= t)."""
    p = np.asarray(values, dtype=np.float64)
    groups = np.where(p >= split["threshold"], 2, 3)
    groups[p >= split["mu2"]] = 1
    groups[p < split["mu1"]] = 4
    return groups.astype(np.int64)


# Robust target: label/student mixture by group, sharpened by (1 + alpha) and renormalised.
def robust_targets(labels, student_probs, alpha):
    """t = ((1-a) onehot(y) + a pS)^(1+a), rows normalised; pS is not detached (as the original)."""
    onehot = F.one_hot(labels, student_probs.shape[1]).to(student_probs.dtype)
    a = alpha[:, None].to(student_probs.dtype)
    target = ((1 - a) * onehot + a * student_probs) ** (1 + a)
    return target / target.sum(dim=1, keepdim=True)


def soft_cross_entropy(logits, target):
    """Mean cross-entropy of logits against soft target distributions."""
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
