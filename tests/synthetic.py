"""A tiny CIFAR-like dataset whose class is visible in the pixels, with a CIFAR-N style label file."""
import os

import numpy as np
import torch

from data.labels import NOISE_TYPES


def make_images(n, num_classes, rng):
    """Class c: a bright square at a class-specific position and colour on a noisy background."""
    labels = np.arange(n) % num_classes
    rng.shuffle(labels)
    x = rng.randint(0, 90, size=(n, 32, 32, 3)).astype(np.uint8)
    for i, c in enumerate(labels):
        r, col = divmod(int(c) % 16, 4)
        x[i, 2 + 7 * r : 9 + 7 * r, 2 + 7 * col : 9 + 7 * col, int(c) % 3] = 250
    return x, labels.astype(np.int64)


def flip_labels(clean, rate, num_classes, rng):
    noisy = clean.copy()
    chosen = rng.rand(len(clean)) < rate
    noisy[chosen] = (clean[chosen] + rng.randint(1, num_classes, chosen.sum())) % num_classes
    return noisy


def write_dataset(root, dataset="cifar10", n_train=400, n_test=200, seed=0):
    """Write <root>/<dataset>.npz and <root>/<CIFAR-N file>; return (npz path, label path)."""
    rng = np.random.RandomState(seed)
    num_classes = 10 if dataset == "cifar10" else 100
    x_train, y_train = make_images(n_train, num_classes, rng)
    x_test, y_test = make_images(n_test, num_classes, rng)
    os.makedirs(root, exist_ok=True)
    npz = os.path.join(root, f"{dataset}.npz")
    np.savez(npz, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    rates = {"clean_label": 0.0, "aggre_label": 0.1, "random_label1": 0.17, "random_label2": 0.18,
             "random_label3": 0.18, "worse_label": 0.4, "noisy_label": 0.4}
    keys = {key for d, key in NOISE_TYPES.values() if d == dataset}
    labels = {key: flip_labels(y_train, rates[key], num_classes, rng) for key in sorted(keys)}
    name = "CIFAR-10_human.pt" if dataset == "cifar10" else "CIFAR-100_human.pt"
    label_path = os.path.join(root, name)
    torch.save(labels, label_path)  # the real files' format: torch zip archive of numpy arrays
    return npz, label_path
