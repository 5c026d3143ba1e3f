"""Atomic file writes: a kill at any moment leaves the old complete file or the new complete one."""
import json
import os
import tempfile
from contextlib import contextmanager

import numpy as np


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; on success fsync it and rename it over `path`."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def portable(path):
    """A path to write into a result file: relative to the project root when given as an absolute path."""
    if path is None or not os.path.isabs(path):
        return path
    return os.path.relpath(path, PROJECT_ROOT)


def save_torch(obj, path):
    import torch  # here, so that modules needing only the other writers load without torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_numpy(array, path):
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array)


def save_json(obj, path, sort_keys=True, indent=2):
    with atomic_path(path) as tmp:
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=indent, sort_keys=sort_keys, default=_json_default)
            fh.write("\n")


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def update_json(path, updates):
    """Merge `updates` into the JSON object at `path` (created if missing), atomically."""
    data = {}
    if os.path.exists(path):
        with open(path) as fh:
            data = json.load(fh)
    data.update(updates)
    save_json(data, path)
