"""sha256 digests of files and of arrays' raw bytes: the project's one hashing helper."""

import hashlib
from typing import Any

import numpy as np

from bkd.utils.files import open_regular


def file_sha256(path: str, chunk: int = 1 << 20) -> str:
    """sha256 (hex) of a file's bytes."""
    digest = hashlib.sha256()
    with open_regular(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def array_sha256(*arrays: Any) -> str:
    """sha256 (hex) of the raw bytes of one or more arrays (numpy or torch), each C-contiguous in its own dtype."""
    digest = hashlib.sha256()
    for value in arrays:
        if hasattr(value, "detach"):  # a torch tensor
            value = value.detach().cpu().contiguous().numpy()
        digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()
