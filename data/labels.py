"""CIFAR-N human label files: locate, download with checksum, load without running pickle code, validate."""

import io
import os
import pickle
import urllib.request
import zipfile
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np

from bkd.data.cifar import DATASETS
from bkd.utils.errors import DataError, UsageError
from bkd.utils.files import open_regular
from bkd.utils.hashing import file_sha256

# --noise_type -> (dataset, key in the CIFAR-N file)
NOISE_TYPES = {
    "clean": ("cifar10", "clean_label"),
    "aggre": ("cifar10", "aggre_label"),
    "rand1": ("cifar10", "random_label1"),
    "rand2": ("cifar10", "random_label2"),
    "rand3": ("cifar10", "random_label3"),
    "worst": ("cifar10", "worse_label"),
    "clean100": ("cifar100", "clean_label"),
    "noisy100": ("cifar100", "noisy_label"),
}
LABEL_FILES = {
    "cifar10": ("CIFAR-10_human.pt", "873e69c39cb9b5e97fb6bae2d60bb59b38a5cbc31d2b868f7903dcb2b9dd2310"),
    "cifar100": ("CIFAR-100_human.pt", "bd2d80409754d420292d622e15e25248ba21e37d27429efac49c8da723f44394"),
}
URL_BASE = "https://raw.githubusercontent.com/UCSC-REAL/cifar-10-100n/main/data/"
DEFAULT_DIR = "./data"

# The only globals a CIFAR-N file may name: numpy array reconstruction.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


def check_noise_type(dataset: str, noise_type: str) -> None:
    """One line (exit 2) where `noise_type` is no CIFAR-N label set of `dataset`."""
    if noise_type not in NOISE_TYPES:
        raise UsageError(f"--noise_type {noise_type!r} is unknown; use one of {', '.join(NOISE_TYPES)}")
    owner = NOISE_TYPES[noise_type][0]
    if owner != dataset:
        valid = [n for n, (d, _) in NOISE_TYPES.items() if d == dataset]
        raise UsageError(
            f"--noise_type {noise_type} belongs to {owner}, not --dataset {dataset}; use one of {', '.join(valid)}"
        )


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numpy arrays are allowed)")

    def persistent_load(self, pid: object) -> NoReturn:
        raise pickle.UnpicklingError("holds torch tensors; a CIFAR-N file holds numpy arrays")


def safe_load(path: str) -> dict[str, Any]:
    """Read a CIFAR-N .pt file (torch's zip format holding a pickled dict of numpy arrays).

    Only numpy array reconstruction is allowed, so no code from the file runs.
    """
    try:
        with open_regular(path, "rb") as fh, zipfile.ZipFile(fh) as archive:
            pkl = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if len(pkl) != 1:
                raise DataError(f"{path}: not a torch-saved CIFAR-N file (no single data.pkl inside)")
            payload = archive.read(pkl[0])
    except zipfile.BadZipFile:
        raise DataError(
            f"{path}: not a CIFAR-N label file (not a torch zip archive; truncated or wrong format?)"
        ) from None
    except OSError as err:
        raise DataError(f"{path}: cannot read label file ({err.strerror or err})") from None
    try:
        obj = _NumpyOnlyUnpickler(io.BytesIO(payload)).load()
    except Exception as err:
        raise DataError(f"{path}: unreadable label file ({err})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict of label arrays, found {type(obj).__name__}")
    return obj


def default_label_path(dataset: str) -> str:
    """./data/<the data set's CIFAR-N file>, as the original."""
    return os.path.join(DEFAULT_DIR, LABEL_FILES[dataset][0])


def download_label_file(dataset: str, path: str) -> None:
    """Download the official CIFAR-N file to `path`, verifying its sha256 before it lands."""
    filename, expected = LABEL_FILES[dataset]
    url = URL_BASE + filename
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".download"
    print(f"Downloading {url} to {path}", flush=True)
    try:
        urllib.request.urlretrieve(url, tmp)
        got = file_sha256(tmp)
        if got != expected:
            raise DataError(
                f"{url}: sha256 {got} does not match the published {expected}; the download was discarded, "
                f"fetch {filename} yourself and pass --noise_path"
            )
        os.replace(tmp, path)
    except OSError as err:
        raise DataError(
            f"could not download {url} ({getattr(err, 'reason', err)}); download {filename} "
            f"by hand and pass --noise_path, or put it at {path}"
        ) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def resolve_label_path(dataset: str, noise_path: str | None, download: bool = True) -> str:
    """--noise_path, or the default path (downloaded there where missing and allowed)."""
    if noise_path:
        if not os.path.exists(noise_path):
            raise DataError(f"--noise_path {noise_path}: no such file")
        return noise_path
    path = default_label_path(dataset)
    if not os.path.exists(path):
        if not download:
            raise DataError(
                f"{path} is missing and downloads are off; pass --noise_path to a {LABEL_FILES[dataset][0]}"
            )
        download_label_file(dataset, path)
    return path


def validate_label_sets(raw: dict[str, Any], path: str, num_images: int, num_classes: int) -> dict[str, np.ndarray]:
    """The integer label sets of a loaded CIFAR-N dict, checked: one label per training image, in range."""
    if "clean_label" not in raw:
        raise DataError(f"{path}: no 'clean_label' entry (keys: {', '.join(map(str, raw))}); is it a CIFAR-N file?")
    sets = {}
    for key, value in raw.items():
        if key.endswith("coarse_label"):
            continue  # CIFAR-100's 20 super-classes are not used
        labels = np.asarray(value)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{path}: '{key}' must be a 1-D integer array, got {labels.dtype} {labels.shape}")
        if len(labels) != num_images:
            raise DataError(f"{path}: '{key}' has {len(labels)} labels for {num_images} training images")
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise DataError(f"{path}: '{key}' has labels outside 0..{num_classes - 1}; wrong dataset's file?")
        sets[key] = labels.astype(np.int64)
    return sets


@dataclass
class LabelFile:
    noisy: np.ndarray  # the chosen label set, one label per training image (all of the file's images)
    clean: np.ndarray  # clean_label
    path: str  # where it was read from
    key: str  # the label set's key in the file, e.g. worse_label


def load_noisy_labels(
    dataset: str, noise_type: str, noise_path: str | None, image_labels: np.ndarray | None = None, download: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """(noisy, clean) label arrays for `noise_type`; see load_label_file."""
    labels = load_label_file(dataset, noise_type, noise_path, image_labels, download)
    return labels.noisy, labels.clean


def load_label_file(
    dataset: str, noise_type: str, noise_path: str | None, image_labels: np.ndarray | None = None, download: bool = True
) -> LabelFile:
    """The label set `noise_type` of a CIFAR-N file, checked.

    With `image_labels` (the image set's official training labels) the file must
    have one label per image and its clean_label must equal them, index by index.
    """
    check_noise_type(dataset, noise_type)
    path = resolve_label_path(dataset, noise_path, download)
    raw = safe_load(path)
    num_images = len(image_labels) if image_labels is not None else len(np.atleast_1d(raw.get("clean_label", [])))
    sets = validate_label_sets(raw, path, num_images, DATASETS[dataset]["num_classes"])
    key = NOISE_TYPES[noise_type][1]
    if key not in sets:
        raise DataError(f"{path}: no '{key}' entry for --noise_type {noise_type}; is it the {dataset} file?")
    if image_labels is not None and not np.array_equal(sets["clean_label"], image_labels):
        wrong = int((sets["clean_label"] != image_labels).sum())
        raise DataError(
            f"{path}: clean_label differs from the training images' labels at {wrong} of {len(image_labels)} "
            "positions; the label file and the images are not in the same order"
        )
    return LabelFile(sets[key], sets["clean_label"], path, key)
