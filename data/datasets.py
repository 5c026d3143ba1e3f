"""The images and labels of one run, for every kind of data set, and the start-up lines the original prints.

CIFAR-10 / CIFAR-100: the image set plus a CIFAR-N label set (noisy and clean labels).
`custom`: your own images and their given labels, with no clean labels (data/custom.py).
Both become one RunData: the source's training images and given labels, the optional
stratified subset, the noisy validation split, the test set (if any) and what the
networks and the augmentation need to know (classes, normalisation, padding, image size).
"""
import os
from dataclasses import dataclass, field

import numpy as np

from bkd.data.cifar import DATASETS, load_images, local_images
from bkd.data.custom import MIN_SIZE, data_file, load_custom
from bkd.data.labels import load_label_file
from bkd.data.split import stratified_subset, train_val_split
from bkd.utils import logfmt
from bkd.utils.errors import DataError
from bkd.utils.files import portable
from bkd.utils.hashing import array_sha256

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@dataclass
class RunData:
    name: str  # cifar10, cifar100 or custom
    x_train: np.ndarray  # every training image of the source (N, S, S, 3) uint8
    given: np.ndarray  # the label each source training image is trained with (the "noisy" label)
    clean: np.ndarray  # the clean label per source training image, or None (custom data)
    x_test: np.ndarray  # or None
    y_test: np.ndarray
    info: dict  # num_classes, mean, std, pad_mode, flip_first
    classes: list  # class names
    ids: np.ndarray  # an identifier per source training image
    subset: np.ndarray = None  # indices of the images this run uses
    train_pos: np.ndarray = None  # positions (in the subset) used for training
    val_pos: np.ndarray = None  # positions used for noisy validation
    banner: list = field(default_factory=list)  # the original's start-up lines about the data (or ours for custom)
    label_path: str = None  # the CIFAR-N label file
    images: np.ndarray = None  # the images of the run (the subset, or all; source order): the "full set" of detection
    labels: np.ndarray = None  # the given label of each image of the run (subset order)
    truly_noisy: np.ndarray = None  # per image of the run: given label != clean label; None without clean labels

    def use(self, subset, train_pos, val_pos):
        """The run's images: `subset` of the source (indices), split into training and validation positions. The
        run's images, labels and noise mask are taken once, here."""
        self.subset, self.train_pos, self.val_pos = subset, train_pos, val_pos
        self.images = None if self.x_train is None else self.x_train[subset]
        self.labels = self.given[subset]
        self.truly_noisy = None if self.clean is None else self.labels != self.clean[subset]

    def fingerprint(self):
        """What a resumed run (and an evaluation) must find again: the images and labels it trains on, its subset,
        split and test set. Loaded without images (detection.py), it has no `images` and `test`."""
        found = {
            "labels": array_sha256(np.asarray(self.labels, dtype=np.int64)),
            "subset": array_sha256(np.asarray(self.subset, dtype=np.int64)),
            "split": array_sha256(np.asarray(self.train_pos, dtype=np.int64), np.asarray(self.val_pos, dtype=np.int64)),
            "num_images": len(self.subset),
        }
        if self.x_train is not None:
            test = () if self.x_test is None else (self.x_test, self.y_test)
            found.update(images=array_sha256(self.images), test=array_sha256(*test))
        return found


FINGERPRINT_NAMES = {"images": "the training images", "labels": "the training labels (label file or --noise_path)",
                     "subset": "the training subset", "split": "the validation split", "test": "the test set",
                     "num_images": "the number of training images"}


def check_same_data(recorded, fingerprint, fix, what="the run being resumed"):
    """One line naming what differs between a recorded fingerprint and this data's, and how to `fix` it (exit 3)."""
    for key, name in FINGERPRINT_NAMES.items():
        if key in fingerprint and recorded.get(key) != fingerprint[key]:
            raise DataError(f"{name} differ from those of {what} ({key} {fingerprint[key]} vs {recorded.get(key)}); {fix}")


def cifar_classes(dataset):
    return CIFAR10_CLASSES if dataset == "cifar10" else [str(c) for c in range(DATASETS[dataset]["num_classes"])]


def load_source(args, with_images=True):
    """The data set without subset and split: RunData with images (unless with_images=False, CIFAR only)."""
    if args.dataset == "custom":
        return custom_source(load_custom(data_file(args), args.image_size, args.keep_image_size))
    return _cifar_source(args, with_images)


def custom_source(custom):
    """Your own data (a checked data.custom.CustomData) as a RunData: classes and normalisation from the data."""
    mean, std = custom.normalisation()
    info = dict(num_classes=custom.num_classes, mean=mean, std=std, pad_mode="reflect", flip_first=True)
    counts = ", ".join(f"{name} {n}" for name, n in zip(custom.classes, np.bincount(custom.y_train)))
    source = custom.source if custom.source == "arrays" else portable(os.path.abspath(custom.source))
    size = f"{custom.image_size}x{custom.image_size}"
    skipped = custom.skipped or {}
    hidden = (f", skipped {skipped.get('files', 0)} hidden file(s) and {skipped.get('folders', 0)} hidden folder(s) (names "
              "starting with '.')") if any(skipped.values()) else ""
    banner = [logfmt.ours(f"custom data {source}: {len(custom.y_train)} training images {size} of {custom.num_classes} "
                          f"classes ({counts}), "
                          + (f"{len(custom.y_test)} test images" if custom.x_test is not None else "no test set: no test accuracy")
                          + hidden)]
    if custom.resized_from:
        banner.append(logfmt.ours(f"the images are {custom.resized_from}x{custom.resized_from}: resized to {size} (bilinear), "
                                  "where PreResNet18's three stride-2 stages still see them; --keep_image_size trains them "
                                  "at their size"))
    elif custom.image_size < MIN_SIZE:
        banner.append(logfmt.ours(f"the images are trained at {size} (--keep_image_size): PreResNet18's three stride-2 stages "
                                  f"leave {max(custom.image_size // 8, 1)}x{max(custom.image_size // 8, 1)} maps of them, "
                                  f"which can cost much of the detection's quality; without the flag they are resized to "
                                  f"{MIN_SIZE}x{MIN_SIZE}"))
    return RunData("custom", custom.x_train, custom.y_train, None, custom.x_test, custom.y_test, info, custom.classes,
                   custom.ids, banner=banner)


def _cifar_source(args, with_images):
    images = load_images(args.dataset, args.data_root, download=not args.no_download) if with_images else None
    labels = load_label_file(args.dataset, args.noise_type, args.noise_path, None if images is None else images.y_train,
                             download=not args.no_download)
    found = not images.downloaded if images is not None else local_images(args.dataset, args.data_root) is not None
    banner = [logfmt.IMAGES_FOUND] if found else []
    banner += logfmt.label_file_lines(args.dataset, labels.key, labels.path, labels.noisy, labels.clean,
                                      DATASETS[args.dataset]["num_classes"])
    return RunData(args.dataset, None if images is None else images.x_train, labels.noisy, labels.clean,
                   None if images is None else images.x_test, None if images is None else images.y_test,
                   dict(DATASETS[args.dataset]), cifar_classes(args.dataset), np.arange(len(labels.noisy)).astype(str),
                   banner=banner, label_path=labels.path)


def load_run_data(args, subset=None, val_ratio=None, with_images=True):
    """Images, labels, subset and split of a run. `subset` (indices) overrides drawing it from --subset."""
    return choose_images(load_source(args, with_images), getattr(args, "subset", 0), args.seed,
                         args.val_ratio if val_ratio is None else val_ratio, subset)


def choose_images(data, subset_size, seed, val_ratio, subset=None):
    """The run's images: the stratified subset (or `subset`, or all) and the noisy validation split."""
    if subset is None:
        # stratified by the official (CIFAR) or given (custom) labels, so every label set of a seed uses the same images
        strata = data.clean if data.clean is not None else data.given
        n = len(strata)
        subset = stratified_subset(strata, subset_size, seed) if subset_size else np.arange(n)
    else:
        _check_subset(subset, len(data.given))
    data.use(subset, *train_val_split(len(subset), val_ratio, seed))
    data.banner += logfmt.split_lines(len(data.train_pos), len(data.val_pos))
    return data


def _check_subset(subset, num_images):
    if subset.min() < 0 or subset.max() >= num_images or len(np.unique(subset)) != len(subset):
        raise DataError(f"the run's saved subset: indices outside 0..{num_images - 1} or repeated: it does not belong to this data "
                        "(another --dataset or data file?); train the run again (--overwrite)")
