"""The images and labels of one run: image set, CIFAR-N labels, optional subset, validation split."""
import os
from dataclasses import dataclass

import numpy as np

from data.cifar import ImageSet, load_images
from data.labels import load_noisy_labels
from data.split import stratified_subset, train_val_split


@dataclass
class RunData:
    images: ImageSet
    subset: np.ndarray  # indices into the official training set of the images this run uses
    noisy: np.ndarray  # noisy label per used image (the "full" view, in original order)
    clean: np.ndarray  # clean label per used image
    train_pos: np.ndarray  # positions in the full view used for training
    val_pos: np.ndarray  # positions in the full view used for noisy validation

    @property
    def x_full(self):
        return self.images.x_train[self.subset]


def load_run_data(args, with_labels=True):
    images = load_images(args.dataset, args.data_root, download=not args.no_download)
    if not with_labels:
        return images
    noisy, clean = load_noisy_labels(args.dataset, args.noise_type, args.noise_path, images.y_train, download=not args.no_download)
    n = len(images.y_train)
    # stratified by the official labels, so every label set of a seed uses the same images
    subset = stratified_subset(images.y_train, args.subset, args.seed) if getattr(args, "subset", 0) else np.arange(n)
    train_pos, val_pos = train_val_split(len(subset), args.val_ratio, args.seed)
    return RunData(images, subset, noisy[subset], clean[subset], train_pos, val_pos)


def saved_subset(run_dir):
    """The subset a run used (train_subset.npy), or None for the whole training set."""
    path = os.path.join(run_dir, "train_subset.npy")
    return np.load(path) if os.path.exists(path) else None
