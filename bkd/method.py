"""The pieces of Blind Knowledge Distillation (arXiv 2211.11355; docs/method.md), as small pure functions.

Each function is one idea of the paper; the training engine only wires them. The
arithmetic is the authors' operation by operation (same ops, same order, float32),
so that the reference mode reproduces their numbers bit for bit; the default mode
uses the same functions.
"""

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike

OTSU_BINS = 1000
OTSU_VAR_FLOOR = 1e-5
OTSU_EMPTY_SCORE = -10000000


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """float32 one-hot rows of `labels`."""
    return F.one_hot(labels, num_classes).float()


# Blind compensation loss: teacher/student logit distance on every class but the labelled one.
def compensation_loss(teacher_logits: torch.Tensor, student_logits: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """sum_{b, c != y_b} (zT - zS)^2 / (B*C - 1); neither side is detached."""
    batch, classes = teacher_logits.shape
    error = (teacher_logits - student_logits) * (1 - onehot)
    return error.pow(2).sum() / (batch * classes - 1)


# Teacher loss: cross-entropy against a probability target (one-hot in warm-up, robust target after).
def teacher_loss(teacher_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the teacher's logits against probability targets."""
    return F.cross_entropy(teacher_logits, target, reduction="none").mean()


# Agreement of teacher and student: normalised product of their class probabilities.
def agreement(teacher_probs: torch.Tensor, student_probs: torch.Tensor) -> torch.Tensor:
    """pA = pT * pS, each row normalised to sum 1."""
    joint = teacher_probs * student_probs
    return joint / joint.sum(dim=1, keepdim=True)


# Prediction everywhere (validation, test, learning.py): argmax of the agreement, not of either network.
def predict(agreement_probs: torch.Tensor) -> torch.Tensor:
    """The class teacher and student agree on: argmax of the agreement probabilities (evaluate's accuracy)."""
    return agreement_probs.argmax(dim=1)


def label_probability(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """probs[b, y_b]: the probability a distribution gives to the given label."""
    return probs[torch.arange(labels.numel(), device=labels.device), labels]


# Overfitting epoch: first epoch whose mean top student probability is a strict peak over +-2 epochs.
def detect_overfitting_epoch(mean_top_probs: Sequence[float]) -> int | None:
    """Index i in 2..len-3 with m_i > m_{i-1}, m_{i-2}, m_{i+1}, m_{i+2}; None with < 6 values or no peak."""
    m = list(mean_top_probs)
    if len(m) < 6:
        return None
    for i in range(2, len(m) - 2):
        if m[i] > m[i - 1] and m[i] > m[i - 2] and m[i] > m[i + 1] and m[i] > m[i + 2]:
            return i
    return None


def first_detectable_epoch(overfit_epoch: int) -> int:
    """The epoch after which the rule can first report `overfit_epoch`: it needs two later values and six in all."""
    return max(overfit_epoch + 2, 5)


def may_still_pick(epoch: int, completed: int) -> bool:
    """Can the rule pick `epoch` once epoch `completed` is done, now or after a later epoch? (It reports an epoch when
    it first can.) The statistics and, for the deferred full-set pass, the weights of such epochs are kept; no other."""
    return first_detectable_epoch(epoch) >= completed


def latest_forceable_epoch(n_epoch: int) -> int | None:
    """The last epoch --overfitting_epoch can name in a run of `n_epoch` epochs (None: the run is too short)."""
    latest = n_epoch - 3
    return latest if latest >= 0 and first_detectable_epoch(latest) <= n_epoch - 1 else None


# The deferred full-set pass of an epoch (default mode) draws its augmentation from that epoch's own seed, whenever it
# runs.
FULL_PASS_SEED_BASE = 1_000_003


def full_pass_seed(seed: int, epoch: int) -> int:
    """The seed of the deferred full-set pass of `epoch` in a run of `seed`."""
    return FULL_PASS_SEED_BASE * seed + epoch + 1


# Otsu split (the paper's variant) of the agreed label probability into trust groups.
def otsu(values: ArrayLike) -> dict[str, float]:
    """Return dict(threshold, mu1, mu2, sigma1, sigma2, score) for values in [0, 1].

    float32 throughout, as the original: `torch.histc` with 1000 bins on [0, 1]; for
    each cut s in 2..997 both sides are summarised by the count-weighted mean and
    standard deviation (variance clamped at 1e-5) of the bins' left edges k/1000; the
    score is (n1 (mu1-mu)^2 + n2 (mu2-mu)^2) / (n1 sigma1 + n2 sigma2) with mu the plain
    mean of the values, and -1e7 when a side is empty; the first best cut wins. The
    threshold is float32(s/1000). If no cut has values on both sides (the original
    crashes there) the first cut is taken and the empty side's values are NaN.
    """
    p = torch.as_tensor(np.asarray(values), dtype=torch.float32).cpu()
    if p.numel() == 0 or not bool(torch.isfinite(p).all()):
        raise ValueError("otsu needs a non-empty array of finite values")
    hist = torch.histc(p, OTSU_BINS, 0, 1)
    mu = p.mean()
    # cuts 0 and 1 are never chosen: the original's list starts with two zeros
    scores: list[float | torch.Tensor] = [0, 0]
    for s in range(2, OTSU_BINS - 2):
        scores.append(_otsu_cut(hist, s, mu)["score"])
    best = int(torch.argmax(torch.tensor([float(q) for q in scores], dtype=torch.float32)))
    if best < 2:
        best = 2
    cut = _otsu_cut(hist, best, mu)
    split = {"threshold": float(torch.tensor(best) / OTSU_BINS), "score": float(cut.pop("score"))}
    for key in ("mu1", "mu2", "sigma1", "sigma2"):
        split[key] = float(cut[key]) if key in cut else float("nan")  # (float of a 0-d tensor: its item())
    return split


def _otsu_cut(hist: torch.Tensor, s: int, mu: torch.Tensor) -> dict[str, torch.Tensor | float]:
    n1, n2 = hist[:s].sum(), hist[s:].sum()
    if n1 == 0 or n2 == 0:
        return {"score": OTSU_EMPTY_SCORE}
    mu1, sigma1 = _side_moments(hist, 0, s, n1)
    mu2, sigma2 = _side_moments(hist, s, OTSU_BINS, n2)
    score = (n1 * (mu1 - mu).pow(2) + n2 * (mu2 - mu).pow(2)) / (n1 * sigma1 + n2 * sigma2)
    return {"score": score, "mu1": mu1, "mu2": mu2, "sigma1": sigma1, "sigma2": sigma2}


def _side_moments(hist: torch.Tensor, lo: int, hi: int, n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    edges = torch.arange(lo, hi) / OTSU_BINS  # left bin edges k/1000, float32
    mean = (hist[lo:hi] * edges).sum() / n
    sigma = ((hist[lo:hi] * (edges - mean).pow(2)).sum() / n).clamp(OTSU_VAR_FLOOR).sqrt()
    return mean, sigma


# Trust groups from the split: G1 most trusted ... G4 least trusted (G4 = flagged as noisy).
def assign_groups(values: ArrayLike, split: dict[str, float]) -> np.ndarray:
    """Array of group ids 1..4 (float32 comparisons): G4 = p < mu1, G3 = p < t, G1 = p >= mu2, G2 = the rest."""
    p = torch.as_tensor(np.asarray(values), dtype=torch.float32).cpu()
    threshold = torch.tensor(split["threshold"], dtype=torch.float32)
    groups = torch.where(p >= threshold, 2, 3)
    groups[p >= split["mu2"]] = 1
    groups[p < split["mu1"]] = 4
    return groups.numpy().astype(np.int64)


# Robust target: label/student mixture by group, sharpened by (1 + alpha) and renormalised.
def robust_targets(onehot: torch.Tensor, student_probs: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """t = ((1-a) onehot(y) + a pS)^(1+a), rows normalised; pS is not detached (as the original)."""
    a = alpha[:, None]
    target = ((1 - a) * onehot + a * student_probs).pow(1 + a)
    return target / target.sum(dim=1, keepdim=True)


# The robust phase's weight of each sample: its trust group's alpha.
def group_alphas(groups: ArrayLike, alphas: Sequence[float], device: torch.device | str) -> torch.Tensor:
    """Per-sample alpha (float32) from group ids 1..4 and (alpha1, alpha2, alpha3, alpha4): the original's group_1..4
    masks times their alphas."""
    table = torch.tensor((1.0,) + tuple(alphas), device=device)
    return table[torch.as_tensor(groups, device=device)]
