"""The images and labels of one run: image set, CIFAR-N labels, optional subset, validation split,
and the start-up lines the original prints about them."""
import os
from dataclasses import dataclass

import numpy as np

from data.cifar import DATASETS, ImageSet, load_images, local_images
from data.labels import LabelFile, load_label_file
from data.split import stratified_subset, train_val_split
from utils import logfmt

SUBSET_FILE = "train_subset.npy"


@dataclass
class RunData:
    images: ImageSet
    labels: LabelFile  # the whole label file's chosen set and clean labels
    subset: np.ndarray  # indices into the official training set of the images this run uses
    train_pos: np.ndarray  # positions in the full view used for training
    val_pos: np.ndarray  # positions in the full view used for noisy validation

    @property
    def x_full(self):
        return self.images.x_train[self.subset]

    @property
    def noisy(self):  # noisy label per used image (the "full" view, in original order)
        return self.labels.noisy[self.subset]

    @property
    def clean(self):
        return self.labels.clean[self.subset]

    def banner(self):
        """The original's start-up lines about the data (spec section 7)."""
        return start_lines(not self.images.downloaded, self.labels, len(self.train_pos), len(self.val_pos), self.images.name)


def start_lines(images_found, labels, num_train, num_val, dataset):
    lines = [logfmt.IMAGES_FOUND] if images_found else []
    lines += logfmt.label_file_lines(dataset, labels.key, labels.path, labels.noisy, labels.clean,
                                     DATASETS[dataset]["num_classes"])
    return lines + logfmt.split_lines(num_train, num_val)


def load_run_data(args, subset=None):
    """Images, labels, subset and split of a run. `subset` (indices) overrides drawing it from --subset."""
    images = load_images(args.dataset, args.data_root, download=not args.no_download)
    labels = load_label_file(args.dataset, args.noise_type, args.noise_path, images.y_train, download=not args.no_download)
    if subset is None:
        # stratified by the official labels, so every label set of a seed uses the same images
        n = len(images.y_train)
        subset = stratified_subset(images.y_train, args.subset, args.seed) if getattr(args, "subset", 0) else np.arange(n)
    train_pos, val_pos = train_val_split(len(subset), args.val_ratio, args.seed)
    return RunData(images, labels, subset, train_pos, val_pos)


def load_run_labels(args, run_dir, val_ratio):
    """For learning.py / detection.py: the label file, the run's subset and the start-up lines, without the images."""
    labels = load_label_file(args.dataset, args.noise_type, args.noise_path, download=not args.no_download)
    subset = saved_subset(run_dir)
    n = len(labels.noisy) if subset is None else len(subset)
    num_val = int(n * val_ratio)
    found = local_images(args.dataset, args.data_root) is not None
    return labels, subset, start_lines(found, labels, n - num_val, num_val, args.dataset)


def saved_subset(run_dir):
    """The subset a run used (train_subset.npy), or None for the whole training set."""
    path = os.path.join(run_dir, SUBSET_FILE)
    return np.load(path) if os.path.exists(path) else None
