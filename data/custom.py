"""Your own labelled images (`--dataset custom`): a prepared array file, or an image folder with one sub-folder per
class.

Array file (`.npz`): `x_train` (N, S, S, 3) uint8 RGB, `y_train` (N,) the given labels (0..C-1),
and optionally `x_test` / `y_test`, `classes` (C names) and `ids` (N identifiers, e.g. file names).
Image folder: torchvision's ImageFolder layout (`<folder>/<class name>/<image>`), read once and
resized to `--image_size`; ids are the files' paths relative to the folder; hidden files and
folders (names starting with '.') are skipped, and counted. 16-bit and floating-point images are
converted by their range. Images smaller than 32 pixels are resized to 32 (PreResNet18's three
stride-2 stages leave almost nothing of them) unless `--keep_image_size`. There are no clean
labels: detection ranks and flags the given ones.
"""

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bkd.data.npz import read_npz
from bkd.utils.errors import DataError, first_line
from bkd.utils.files import open_regular

DEFAULT_FILE = "custom.npz"
MIN_SIZE = 32  # smaller images are resized to this size by default: at 8x8 the last stage of PreResNet18 sees 1x1 maps


@dataclass
class CustomData:
    """Your images and their given labels, checked (no clean labels)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None  # None: no test set, no test accuracy
    y_test: np.ndarray | None
    classes: list[str]
    ids: np.ndarray
    source: str
    skipped: dict[str, int] | None = None  # image folders: hidden files and folders skipped, {"files": n, "folders": m}
    resized_from: int | None = None  # the images' own size, where it was below MIN_SIZE and they were resized to it

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> int:
        return self.x_train.shape[1]

    def normalisation(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and std of the training images in [0, 1], for Normalize."""
        pixels = self.x_train.reshape(-1, 3)
        mean = pixels.mean(axis=0, dtype=np.float64) / 255
        std = pixels.std(axis=0, dtype=np.float64) / 255
        return tuple(float(m) for m in mean), tuple(float(max(s, 1e-3)) for s in std)


def load_custom(path: str, image_size: int = 32, keep_size: bool = False) -> CustomData:
    """The data at `path` (an .npz file or an image folder), checked, at `image_size` for a folder (at least MIN_SIZE
    unless `keep_size`) and at its own size for an .npz file (resized to MIN_SIZE if smaller, unless `keep_size`)."""
    if os.path.isdir(path):
        data = _load_folder(path, image_size if keep_size else max(image_size, MIN_SIZE))
    elif os.path.exists(path):
        data = _load_npz(path)
    else:
        raise DataError(
            f"--data_file {path}: no such file or folder; give an .npz array file or an image folder "
            "(docs/custom-data.md)"
        )
    return _at_least_min_size(_check(data), keep_size)


def from_arrays(
    images: np.ndarray | Sequence[np.ndarray],
    labels: np.ndarray | Sequence[int],
    classes: Sequence[str] | None = None,
    ids: Sequence[str] | None = None,
    test: tuple[np.ndarray, np.ndarray] | None = None,
    keep_size: bool = False,
) -> CustomData:
    """Your data as arrays (the Python API): checked as an .npz file's arrays would be. `test`: (x_test, y_test)."""
    shapes = sorted({np.shape(image) for image in images}, key=str) if isinstance(images, (list, tuple)) else []
    if len(shapes) > 1:
        raise DataError(
            f"images: a list of images of {len(shapes)} shapes ({', '.join(map(str, shapes[:3]))}); give them "
            "one size (resize them), or put them in an image folder, which is resized to --image_size"
        )
    arrays = {"x_train": np.asarray(images), "y_train": np.asarray(labels)}
    x_test, y_test = test if test is not None else (None, None)
    for key, value in (("classes", classes), ("ids", ids), ("x_test", x_test), ("y_test", y_test)):
        if value is not None:
            arrays[key] = np.asarray(value)
    return _at_least_min_size(_check(_from_dict(arrays, "arrays")), keep_size)


def _at_least_min_size(d: CustomData, keep_size: bool) -> CustomData:
    """Images smaller than MIN_SIZE, resized to it (bilinear), unless `keep_size`."""
    size = d.image_size
    if keep_size or size >= MIN_SIZE:
        return d
    d.x_train = _resize(d.x_train, MIN_SIZE)
    if d.x_test is not None:
        d.x_test = _resize(d.x_test, MIN_SIZE)
    d.resized_from = size
    return d


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.stack(
        [np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BILINEAR)) for img in images]
    )


def _load_npz(path: str) -> CustomData:
    return _from_dict(read_npz(path, ("x_train", "y_train"), ("x_test", "y_test", "classes", "ids")), path)


def _from_dict(arrays: dict[str, np.ndarray], path: str) -> CustomData:
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise DataError(
            f"{path}: x_test and y_test come together; it has only {'x_test' if 'x_test' in arrays else 'y_test'}"
        )
    y = arrays["y_train"]
    if len(arrays["x_train"]) == 0 or y.size == 0:
        raise DataError(f"{path}: x_train is empty (no training images); docs/custom-data.md")
    named = arrays.get("classes")
    if named is not None:
        classes = [str(c) for c in named]
    else:
        top = int(y.max()) + 1 if np.issubdtype(y.dtype, np.integer) else 0
        if top > len(y):  # every class needs an image: more classes than images cannot be
            raise DataError(
                f"{path}: label {top - 1} implies {top} classes for {len(y)} images; labels must be 0..C-1 "
                "(renumber them), or name the classes in a `classes` array"
            )
        classes = [str(c) for c in range(top)]
    ids = arrays.get("ids")
    if ids is not None and ids.ndim != 1:
        raise DataError(f"{path}: ids must hold one identifier per image (1-D), got shape {ids.shape}")
    x_test, y_test = arrays.get("x_test"), arrays.get("y_test")  # both or neither (above)
    if x_test is not None and y_test is not None and len(x_test) == 0 and y_test.size == 0:
        x_test = y_test = None  # an empty test set is no test set
    return CustomData(
        arrays["x_train"],
        y,
        x_test,
        y_test,
        classes,
        np.arange(len(y)).astype(str) if ids is None else ids.astype(str),
        path,
    )


def _load_folder(path: str, image_size: int) -> CustomData:
    from torchvision.datasets.folder import IMG_EXTENSIONS

    classes, hidden_folders = _class_folders(path)
    if not classes:
        raise DataError(f"{path}: no class sub-folders; put each class's images in <folder>/<class name>/")
    samples, skipped = _image_files(path, classes, IMG_EXTENSIONS)
    skipped["folders"] += hidden_folders
    if not samples:
        raise DataError(f"{path}: no images in its class sub-folders ({', '.join(IMG_EXTENSIONS)})")
    images = np.empty((len(samples), image_size, image_size, 3), dtype=np.uint8)
    for i, (file, _) in enumerate(samples):
        images[i] = _read_image(file, image_size)
    labels = np.array([label for _, label in samples], dtype=np.int64)
    ids = np.array([os.path.relpath(file, path) for file, _ in samples])
    return CustomData(images, labels, None, None, classes, ids, path, skipped=skipped)


def _hidden(name: str) -> bool:
    return name.startswith(".")  # .ipynb_checkpoints, macOS's ._name.png and .DS_Store, thumbnails: never data


def _class_folders(path: str) -> tuple[list[str], int]:
    """The class sub-folders, sorted (torchvision's order), without hidden ones; and how many hidden ones there were."""
    try:
        names = sorted(entry.name for entry in os.scandir(path) if entry.is_dir())
    except OSError as err:
        raise DataError(f"{path}: cannot list the folder ({err.strerror})") from None
    return [n for n in names if not _hidden(n)], sum(map(_hidden, names))


def _image_files(
    path: str, classes: Sequence[str], extensions: tuple[str, ...]
) -> tuple[list[tuple[str, int]], dict[str, int]]:
    """(file, class index) of every image under <path>/<class>/, in torchvision's order (sorted walk), and the hidden
    files and folders skipped on the way.

    Linked folders are followed once: a folder reached again (a link loop, two links to one
    folder, a link to another class's folder) is skipped, so no image is read twice.
    """
    class_roots = {os.path.realpath(os.path.join(path, name)) for name in classes}
    samples: list[tuple[str, int]] = []
    seen: set[str] = set()
    skipped = {"files": 0, "folders": 0}
    for index, name in enumerate(classes):
        folders: list[tuple[str, list[str]]] = []
        own = os.path.realpath(os.path.join(path, name))
        for root, dirs, files in os.walk(os.path.join(path, name), followlinks=True):
            real = os.path.realpath(root)
            if real in seen or (real in class_roots and real != own):
                dirs[:] = []
                continue
            seen.add(real)
            skipped["folders"] += sum(map(_hidden, dirs))
            dirs[:] = [d for d in dirs if not _hidden(d)]
            skipped["files"] += sum(map(_hidden, files))
            folders.append((root, sorted(f for f in files if not _hidden(f) and f.lower().endswith(extensions))))
        samples += [(os.path.join(root, f), index) for root, files in sorted(folders) for f in files]
    return samples, skipped


def _read_image(file: str, size: int) -> np.ndarray:
    """One image as (size, size, 3) uint8 RGB. 16-bit images are scaled from 0..65535, floating-point ones from 0..1 (or
    0..255 where they exceed 1): Pillow's conversion to RGB would clip the one to white and the other to black."""
    from PIL import Image, ImageOps

    try:
        with open_regular(file, "rb") as fh, Image.open(fh) as opened:
            img = ImageOps.exif_transpose(opened)  # upright, as photo viewers show it (docs/custom-data.md)
            if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
                img = Image.fromarray(_eight_bits(np.asarray(img), img.mode, file))
            return np.asarray(img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"{file}: unreadable image ({first_line(err)}); remove or replace it") from None


def _eight_bits(values: np.ndarray, mode: str, file: str) -> np.ndarray:
    values = values.astype(np.float64)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if not np.isfinite(values).all():
        raise DataError(f"{file}: a {mode} image with values that are not finite; convert it to an 8-bit image")
    if mode == "F" and low >= 0 and high <= 1:
        scale = 255.0
    elif mode == "F" and low >= 0 and high <= 255:
        scale = 1.0
    elif mode != "F" and low >= 0 and high <= 65535:
        scale = 255.0 / 65535
    else:
        raise DataError(
            f"{file}: a {mode} image with values in {low:g}..{high:g}, outside the 16-bit or 0..1 range it "
            "would be read by; convert it to an 8-bit image"
        )
    return np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)


def _check(d: CustomData) -> CustomData:
    src = d.source
    x, y = d.x_train, d.y_train
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[3] != 3:
        raise DataError(f"{src}: x_train must be uint8 RGB images (N, H, W, 3), got {x.dtype} {x.shape}")
    if x.shape[1] != x.shape[2] or x.shape[1] < 8:
        raise DataError(
            f"{src}: images must be square and at least 8 pixels, got {x.shape[1]}x{x.shape[2]}; "
            "resize them, or use an image folder with --image_size"
        )
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise DataError(
            f"{src}: y_train must hold one integer label per image, got {y.dtype} {y.shape} for {len(x)} images"
        )
    if len(x) == 0:
        raise DataError(f"{src}: x_train is empty (no training images)")
    if len(d.classes) < 2:
        raise DataError(f"{src}: {len(d.classes)} class(es); detection needs at least two")
    if len(y) and (y.min() < 0 or y.max() >= len(d.classes)):
        bad = int(y[(y < 0) | (y >= len(d.classes))][0])
        raise DataError(f"{src}: label {bad} is outside 0..{len(d.classes) - 1} (one per class name)")
    counts = np.bincount(y, minlength=len(d.classes))
    if (counts == 0).any():
        empty = int(np.flatnonzero(counts == 0)[0])
        if d.classes == [str(c) for c in range(len(d.classes))]:  # classes numbered from the labels: a gap in them
            raise DataError(
                f"{src}: labels must be 0..C-1 with an image for each, but no image has label {empty} (of "
                f"0..{len(d.classes) - 1}); renumber them, e.g. np.unique(labels, return_inverse=True)[1]"
            )
        raise DataError(f"{src}: class {empty} ({d.classes[empty]!r}) has no training image; drop it or add images")
    if len(d.ids) != len(y):
        raise DataError(f"{src}: ids has {len(d.ids)} entries for {len(y)} training images")
    if d.x_test is not None and d.y_test is not None:  # (both or neither: _from_dict)
        if d.x_test.dtype != np.uint8 or d.x_test.shape[1:] != x.shape[1:]:
            raise DataError(
                f"{src}: x_test must be uint8 {x.shape[1:]} like x_train, got {d.x_test.dtype} {d.x_test.shape}"
            )
        if d.y_test.ndim != 1 or len(d.y_test) != len(d.x_test) or not np.issubdtype(d.y_test.dtype, np.integer):
            raise DataError(f"{src}: y_test must hold one integer label per test image, got {d.y_test.shape}")
        if len(d.y_test) and (d.y_test.min() < 0 or d.y_test.max() >= len(d.classes)):
            raise DataError(f"{src}: y_test has labels outside 0..{len(d.classes) - 1}")
        d.y_test = d.y_test.astype(np.int64)
    d.y_train = y.astype(np.int64)
    return d
