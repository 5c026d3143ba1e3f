"""A tiny CIFAR-like dataset whose class is visible in the pixels, with a CIFAR-N style label file."""

import os
from dataclasses import replace

import numpy as np
import torch

from bkd.data.labels import NOISE_TYPES


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
    rates = {
        "clean_label": 0.0,
        "aggre_label": 0.1,
        "random_label1": 0.17,
        "random_label2": 0.18,
        "random_label3": 0.18,
        "worse_label": 0.4,
        "noisy_label": 0.4,
    }
    keys = {key for d, key in NOISE_TYPES.values() if d == dataset}
    labels = {key: flip_labels(y_train, rates[key], num_classes, rng) for key in sorted(keys)}
    name = "CIFAR-10_human.pt" if dataset == "cifar10" else "CIFAR-100_human.pt"
    label_path = os.path.join(root, name)
    torch.save(labels, label_path)  # the real files' format: torch zip archive of numpy arrays
    return npz, label_path


CUSTOM_CLASSES = ["red square", "green square", "blue square", "red bar", "green bar"]


def write_custom(root, n_train=300, n_test=100, flip_rate=0.2, folder=False, size=32, seed=0):
    """A custom data set of 5 visible classes with `flip_rate` of the given labels flipped to another class.

    Writes <root>/custom.npz (with a test set, class names and ids), or with folder=True an image
    folder <root>/images/<class name>/img_<k>.png (given labels = folders, no test set).
    Returns (path, clean labels, flipped mask) in the order the loader will see the images.
    """
    from PIL import Image

    rng = np.random.RandomState(seed)
    k = len(CUSTOM_CLASSES)
    x, clean = make_images(n_train, k, rng)
    given = flip_labels(clean, flip_rate, k, rng)
    if size != 32:
        x = np.stack([np.asarray(Image.fromarray(img).resize((size, size))) for img in x])
    os.makedirs(root, exist_ok=True)
    if not folder:
        x_test, y_test = make_images(n_test, k, rng)
        path = os.path.join(root, "custom.npz")
        np.savez(
            path,
            x_train=x,
            y_train=given,
            x_test=x_test,
            y_test=y_test,
            classes=np.array(CUSTOM_CLASSES),
            ids=np.array([f"photo_{i:04d}.jpg" for i in range(n_train)]),
        )
        return path, clean, given != clean
    path = os.path.join(root, "images")
    for i, (img, label) in enumerate(zip(x, given, strict=True)):
        os.makedirs(os.path.join(path, CUSTOM_CLASSES[label]), exist_ok=True)
        Image.fromarray(img).save(os.path.join(path, CUSTOM_CLASSES[label], f"img_{i:04d}.png"))
    # ImageFolder's order: classes sorted by name, files sorted within a class
    order = sorted(range(n_train), key=lambda i: (CUSTOM_CLASSES[given[i]], f"img_{i:04d}.png"))
    return path, clean[order], (given != clean)[order]


def tiny_run(config, n=120, num_classes=4):
    """A bkd.run.Run on the CPU over `n` synthetic images, without outputs, built as bkd.run.fit builds it."""
    from bkd.config import resolve_computation
    from bkd.data.custom import from_arrays
    from bkd.data.datasets import CUSTOM, DataSelection, input_dataset
    from bkd.run import Job, Run
    from bkd.utils.logfmt import quiet

    images, labels = make_images(n, num_classes, np.random.RandomState(0))
    data = input_dataset(
        DataSelection(dataset=CUSTOM, arrays=from_arrays(images, labels)), replace(config, subset=0, seed=0)
    )
    device = torch.device("cpu")
    torch.manual_seed(0)
    return Run(Job(config, data, device, resolve_computation(config, device), quiet))
