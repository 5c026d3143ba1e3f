"""The data of a run, chosen by one DataSelection and loaded by one function, input_dataset (the original's name).

CIFAR-10 / CIFAR-100: the image set plus a CIFAR-N label set (noisy and clean labels).
`custom`: your own images and their given labels, with no clean labels (data/custom.py), from a file or folder, or
from arrays (the Python API). The flags make the selection (flags.data_selection), the Python API makes it from its
arguments, and both load through input_dataset: the source's training images and given labels, the optional
stratified subset, the noisy validation split, the test set (if any) and what the networks and the augmentation
need to know (classes, normalisation, padding, image size), with the original's start-up lines.
"""

import os
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from bkd.data.cifar import DATASETS, load_images, local_images
from bkd.data.corrections import Corrections, read_corrections
from bkd.data.custom import DEFAULT_FILE, MIN_SIZE, CustomData, load_custom
from bkd.data.labels import load_label_file
from bkd.data.split import stratified_subset, train_val_split
from bkd.utils import logfmt
from bkd.utils.errors import DataError
from bkd.utils.files import shown
from bkd.utils.hashing import array_sha256, file_sha256


class ImageChoice(Protocol):
    """What input_dataset reads of a run's values (bkd.config.TrainConfig, the layer above, has them)."""

    @property
    def subset(self) -> int: ...
    @property
    def seed(self) -> int: ...
    @property
    def val_ratio(self) -> float: ...


CUSTOM = "custom"  # --dataset custom: your own labelled images
_NOT_CHOSEN = np.zeros(0, dtype=np.int64)  # a RunData's images of the run, until `use` chooses them


@dataclass(frozen=True)
class DataSelection:
    """Which data a run trains on. Defaults as the training script's flags (flags.py)."""

    dataset: str = "cifar10"  # cifar10, cifar100 or custom
    noise_type: str = "clean"  # the CIFAR-N label set (data/labels.py: NOISE_TYPES); CIFAR only
    data_root: str = "~/data"  # the CIFAR images: <data_root>/<dataset>.npz or torchvision's folders
    noise_path: str | None = None  # the CIFAR-N label file (None: ./data/<file>, downloaded if missing)
    download: bool = True  # images and label files may be downloaded
    data_file: str | None = None  # custom: an .npz file or an image folder (None: <data_root>/custom.npz)
    image_size: int = 32  # custom image folder: images are resized to this size
    keep_image_size: bool = False  # custom: images smaller than 32 pixels are trained at their size
    corrections: str | None = None  # a corrections file (data/corrections.py), applied before anything is chosen
    # custom data given as arrays (the Python API)
    arrays: CustomData | None = field(default=None, compare=False, repr=False)

    @property
    def custom(self) -> bool:
        return self.dataset == CUSTOM

    @property
    def custom_file(self) -> str:
        """--data_file, or <data_root>/custom.npz."""
        return os.path.expanduser(self.data_file or os.path.join(self.data_root, DEFAULT_FILE))

    def identity(self) -> dict[str, Any]:
        """What of the selection a resumed run (bkd.resume) and a relaunched grid must find again, besides the data's
        fingerprint. Custom data has no label set, and only an image folder is resized to image_size (None: does not
        apply); a corrections file is its sha256 (None: none)."""
        corrections = file_sha256(self.corrections) if self.corrections else None
        if not self.custom:
            return {
                "dataset": self.dataset,
                "noise_type": self.noise_type,
                "image_size": self.image_size,
                "keep_image_size": self.keep_image_size,
                "corrections": corrections,
            }
        folder = self.arrays is None and os.path.isdir(self.custom_file)
        return {
            "dataset": CUSTOM,
            "noise_type": None,
            "image_size": self.image_size if folder else None,
            "keep_image_size": self.keep_image_size,
            "corrections": corrections,
        }


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@dataclass
class RunData:
    """A run's data: its source (training images and labels, test set, what the networks need to know) and, once
    `use` chose them, the run's images, labels and validation split."""

    name: str  # cifar10, cifar100 or custom
    x_train: np.ndarray | None  # every training image of the source (N, S, S, 3) uint8; None: loaded without images
    given: np.ndarray  # the label each source training image is trained with (the "noisy" label)
    clean: np.ndarray | None  # the clean label per source training image; None without clean labels (custom data)
    x_test: np.ndarray | None  # None: no test set
    y_test: np.ndarray | None
    info: dict[str, Any]  # num_classes, mean, std, pad_mode, flip_first
    classes: list[str]  # class names
    ids: np.ndarray  # an identifier per source training image
    subset: np.ndarray = field(default_factory=lambda: _NOT_CHOSEN)  # indices of the images this run uses
    train_pos: np.ndarray = field(default_factory=lambda: _NOT_CHOSEN)  # positions (in the subset) used for training
    val_pos: np.ndarray = field(default_factory=lambda: _NOT_CHOSEN)  # positions used for noisy validation
    banner: list[str] = field(default_factory=list)  # the original's start-up lines about the data (ours for custom)
    label_path: str | None = None  # the CIFAR-N label file
    images: np.ndarray | None = None  # the images of the run (the subset, or all; source order): detection's full set
    labels: np.ndarray = field(default_factory=lambda: _NOT_CHOSEN)  # the given label of each image of the run
    truly_noisy: np.ndarray | None = None  # per image of the run: given label != clean label; None without clean labels
    # each source image's position in the data as given (images a corrections file removed are not here)
    source_positions: np.ndarray = field(default_factory=lambda: _NOT_CHOSEN)

    @property
    def positions(self) -> np.ndarray:
        """Each image of the run's position in the data as given (label_issues.csv's `position`)."""
        return self.source_positions[self.subset]

    def use(self, subset: np.ndarray, train_pos: np.ndarray, val_pos: np.ndarray) -> None:
        """The run's images: `subset` of the source (indices), split into training and validation positions. The
        run's images, labels and noise mask are taken once, here."""
        self.subset, self.train_pos, self.val_pos = subset, train_pos, val_pos
        self.images = None if self.x_train is None else self.x_train[subset]
        self.labels = self.given[subset]
        self.truly_noisy = None if self.clean is None else self.labels != self.clean[subset]

    def fingerprint(self) -> dict[str, Any]:
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


def cifar_classes(dataset: str) -> list[str]:
    """CIFAR-10's class names; CIFAR-100's class numbers."""
    return CIFAR10_CLASSES if dataset == "cifar10" else [str(c) for c in range(DATASETS[dataset]["num_classes"])]


def input_dataset(
    selection: DataSelection, config: ImageChoice, subset: np.ndarray | None = None, with_images: bool = True
) -> RunData:
    """The run's data: `selection`'s source, the stratified subset of config.subset images (or `subset`, indices: a
    run's saved train_subset.npy) drawn with config.seed, and the noisy validation split of config.val_ratio.
    Without images (detection.py): labels only, CIFAR only."""
    if selection.custom:
        custom = selection.arrays
        if custom is None:
            custom = load_custom(selection.custom_file, selection.image_size, selection.keep_image_size)
        data = custom_source(custom)
    else:
        data = cifar_source(selection, with_images)
    if selection.corrections:
        found = read_corrections(selection.corrections, data.ids, data.given, data.info["num_classes"])
        data = corrected(data, found, selection.corrections)
    return choose_images(data, config.subset, config.seed, config.val_ratio, subset)


def corrected(data: RunData, corrections: Corrections, path: str) -> RunData:
    """`data` with a person's decisions applied: new given labels, and the removed images gone (source_positions keeps
    where the others were, which label_issues.csv shows)."""
    given = data.given.copy()
    for position, label in corrections.relabel.items():
        given[position] = label
    keep = np.ones(len(given), dtype=bool)
    keep[sorted(corrections.remove)] = False
    changed = int((given != data.given).sum())
    data.given = given[keep]
    data.clean = None if data.clean is None else data.clean[keep]
    data.x_train = None if data.x_train is None else data.x_train[keep]
    data.ids = data.ids[keep]
    data.source_positions = np.flatnonzero(keep)
    data.banner.append(
        logfmt.ours(
            f"corrections {shown(path)}: {changed} label(s) changed, {len(corrections.remove)} image(s) removed, "
            f"{int(keep.sum())} left (sha256 {corrections.sha256[:12]})"
        )
    )
    return data


def custom_source(custom: CustomData) -> RunData:
    """Your own data (a checked data.custom.CustomData) as a RunData: classes and normalisation from the data."""
    mean, std = custom.normalisation()
    info = dict(num_classes=custom.num_classes, mean=mean, std=std, pad_mode="reflect", flip_first=True)
    counts = ", ".join(f"{name} {n}" for name, n in zip(custom.classes, np.bincount(custom.y_train), strict=False))
    source = custom.source if custom.source == "arrays" else shown(custom.source)
    size = f"{custom.image_size}x{custom.image_size}"
    skipped = custom.skipped or {}
    hidden = (
        (
            f", skipped {skipped.get('files', 0)} hidden file(s) and {skipped.get('folders', 0)} hidden folder(s) "
            "(names starting with '.')"
        )
        if any(skipped.values())
        else ""
    )
    banner = [
        logfmt.ours(
            f"custom data {source}: {len(custom.y_train)} training images {size} of {custom.num_classes} "
            f"classes ({counts}), "
            + (f"{len(custom.y_test)} test images" if custom.y_test is not None else "no test set: no test accuracy")
            + hidden
        )
    ]
    if custom.resized_from:
        banner.append(
            logfmt.ours(
                f"the images are {custom.resized_from}x{custom.resized_from}: resized to {size} (bilinear), "
                "where PreResNet18's three stride-2 stages still see them; --keep_image_size trains them "
                "at their size"
            )
        )
    elif custom.image_size < MIN_SIZE:
        banner.append(
            logfmt.ours(
                f"the images are trained at {size} (--keep_image_size): PreResNet18's three stride-2 stages "
                f"leave {max(custom.image_size // 8, 1)}x{max(custom.image_size // 8, 1)} maps of them, "
                f"which can cost much of the detection's quality; without the flag they are resized to "
                f"{MIN_SIZE}x{MIN_SIZE}"
            )
        )
    return RunData(
        "custom",
        custom.x_train,
        custom.y_train,
        None,
        custom.x_test,
        custom.y_test,
        info,
        custom.classes,
        custom.ids,
        banner=banner,
    )


def cifar_source(selection: DataSelection, with_images: bool = True) -> RunData:
    """A CIFAR image set with a CIFAR-N label set, as a RunData (without images: labels only)."""
    name = selection.dataset
    images = load_images(name, selection.data_root, download=selection.download) if with_images else None
    labels = load_label_file(
        name,
        selection.noise_type,
        selection.noise_path,
        None if images is None else images.y_train,
        download=selection.download,
    )
    found = not images.downloaded if images is not None else local_images(name, selection.data_root) is not None
    banner = [logfmt.IMAGES_FOUND] if found else []
    banner += logfmt.label_file_lines(
        name, labels.key, labels.path, labels.noisy, labels.clean, DATASETS[name]["num_classes"]
    )
    return RunData(
        name,
        None if images is None else images.x_train,
        labels.noisy,
        labels.clean,
        None if images is None else images.x_test,
        None if images is None else images.y_test,
        dict(DATASETS[name]),
        cifar_classes(name),
        np.arange(len(labels.noisy)).astype(str),
        banner=banner,
        label_path=labels.path,
    )


def choose_images(
    data: RunData, subset_size: int, seed: int, val_ratio: float, subset: np.ndarray | None = None
) -> RunData:
    """The run's images: the stratified subset (or `subset`, or all) and the noisy validation split."""
    if not len(data.source_positions):  # (no corrections removed any: each image is where it was given)
        data.source_positions = np.arange(len(data.given))
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


def _check_subset(subset: np.ndarray, num_images: int) -> None:
    if subset.min() < 0 or subset.max() >= num_images or len(np.unique(subset)) != len(subset):
        raise DataError(
            f"the run's saved subset: indices outside 0..{num_images - 1} or repeated: it does not belong to this data "
            "(another --dataset or data file?); train the run again (--overwrite)"
        )
