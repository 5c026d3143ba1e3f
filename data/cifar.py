"""CIFAR-10 / CIFAR-100 images as uint8 arrays: a prepared .npz file, or torchvision's datasets."""

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from bkd.data.npz import read_npz
from bkd.utils.errors import DataError, UsageError

DATASETS: dict[str, dict[str, Any]] = {
    # name: classes, normalisation mean / std, padding of the random crop, flip before crop
    "cifar10": dict(
        num_classes=10,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2023, 0.1994, 0.2010),
        pad_mode="reflect",
        flip_first=True,
        folder="cifar-10-batches-py",  # torchvision's folder of the official batches
    ),
    "cifar100": dict(
        num_classes=100,
        mean=(0.5071, 0.4867, 0.4408),
        std=(0.2675, 0.2565, 0.2761),
        pad_mode="constant",
        flip_first=False,
        folder="cifar-100-python",
    ),
}
DATA_ROOT_ENV = "BKD_DATA_ROOT"


def default_data_root() -> str:
    """--data_root's default: $BKD_DATA_ROOT, or ~/data."""
    return os.environ.get(DATA_ROOT_ENV, "~/data")


def dataset_info(name: str) -> dict[str, Any]:
    """DATASETS[name], or one line naming the data sets there are."""
    if name not in DATASETS:
        raise UsageError(f"--dataset {name!r} is unknown; use one of {', '.join(DATASETS)}")
    return DATASETS[name]


@dataclass
class ImageSet:
    """Training and test images (N, 32, 32, 3) uint8 with their official labels."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str
    downloaded: bool = (
        False  # fetched by this call (the original prints "Files already downloaded and verified" otherwise)
    )

    @property
    def num_classes(self) -> int:
        return DATASETS[self.name]["num_classes"]


def local_images(name: str, data_root: str) -> str | None:
    """The prepared array file or torchvision folder of `name` under `data_root`, or None if neither is there."""
    data_root = os.path.expanduser(data_root)
    for path in (os.path.join(data_root, f"{name}.npz"), os.path.join(data_root, dataset_info(name)["folder"])):
        if os.path.exists(path):
            return path
    return None


def load_images(name: str, data_root: str, download: bool = True) -> ImageSet:
    """Load `<data_root>/<name>.npz` if present, else torchvision's dataset (downloading it if allowed)."""
    info = dataset_info(name)
    data_root = os.path.expanduser(data_root)
    npz = os.path.join(data_root, f"{name}.npz")
    if os.path.exists(npz):
        images = _load_npz(name, npz)
    else:
        images = _load_torchvision(name, data_root, download)
    _check(images, info["num_classes"])
    return images


def _load_npz(name: str, path: str) -> ImageSet:
    a = read_npz(path, ("x_train", "y_train", "x_test", "y_test"), doc="docs/data.md")
    return ImageSet(name, a["x_train"], a["y_train"], a["x_test"], a["y_test"], source=path)


def _load_torchvision(name: str, data_root: str, download: bool) -> ImageSet:
    from torchvision import datasets

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    present = os.path.isdir(os.path.join(data_root, cls.base_folder))
    hint = (
        f"put the official {cls.base_folder} folder in {data_root}, or a prepared array file "
        f"{os.path.join(data_root, name + '.npz')} (docs/data.md); --data_root or ${DATA_ROOT_ENV} sets the folder"
    )
    try:
        train = cls(data_root, train=True, download=download)
        test = cls(data_root, train=False, download=download)
    except RuntimeError as err:
        raise DataError(f"{name} images not found in {data_root} ({err}); {hint}") from None
    except OSError as err:  # URLError and socket errors are OSErrors
        raise DataError(f"could not download {name} to {data_root} ({err}); {hint}") from None
    return ImageSet(
        name,
        x_train=train.data,
        y_train=np.asarray(train.targets, dtype=np.int64),
        x_test=test.data,
        y_test=np.asarray(test.targets, dtype=np.int64),
        source=os.path.join(data_root, cls.base_folder),
        downloaded=not present,
    )


def _check(images: ImageSet, num_classes: int) -> None:
    for split in ("train", "test"):
        x, y = getattr(images, f"x_{split}"), getattr(images, f"y_{split}")
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3):
            raise DataError(f"{images.source}: x_{split} must be uint8 (N, 32, 32, 3), got {x.dtype} {x.shape}")
        if y.ndim != 1 or len(y) != len(x):
            raise DataError(f"{images.source}: y_{split} must hold one label per image, got shape {y.shape}")
        if len(y) and (y.min() < 0 or y.max() >= num_classes):
            raise DataError(f"{images.source}: y_{split} has labels outside 0..{num_classes - 1}")
    images.y_train = images.y_train.astype(np.int64)
    images.y_test = images.y_test.astype(np.int64)
