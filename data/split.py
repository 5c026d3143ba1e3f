"""Which training images a run uses: the optional stratified subset, and the noisy validation split."""

import numpy as np
from numpy.typing import ArrayLike

from bkd.utils.errors import UsageError


def stratified_subset(labels: ArrayLike, size: int, seed: int) -> np.ndarray:
    """`size` indices (sorted, original order) with the classes of `labels` in proportion, seeded.

    Used by small-scale runs; the per-class counts are floor(size * share) plus
    the largest remainders, so the subset's class balance matches the full set's.
    """
    labels = np.asarray(labels)
    if not 0 < size <= len(labels):
        raise UsageError(f"--subset {size} must be between 1 and the {len(labels)} training images (0 = all)")
    rng = np.random.RandomState(seed)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * size / len(labels)
    take = np.floor(exact).astype(int)
    for k in np.argsort(-(exact - take), kind="stable")[: size - take.sum()]:
        take[k] += 1
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:n] for c, n in zip(classes, take, strict=True)]
    return np.sort(np.concatenate(chosen))


def train_val_split(num_images: int, val_ratio: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy validation split, as the original draws it: a permutation right after seeding numpy with `seed`; the
    first int(val_ratio * N) positions (`val_ratio` in [0, 1), checked with the flags: bkd.config) are validation,
    the rest training."""
    perm = np.random.RandomState(seed).permutation(num_images)
    num_val = int(val_ratio * num_images)
    return perm[num_val:], perm[:num_val]
