"""Reading a prepared array file (.npz) safely: plain arrays only, and one line saying what else the file is."""

from collections.abc import Sequence

import numpy as np

from bkd.utils.errors import DataError, first_line
from bkd.utils.files import open_regular

ZIP, NPY = b"PK\x03\x04", b"\x93NUMPY"


def read_npz(
    path: str, required: Sequence[str], optional: Sequence[str] = (), doc: str = "docs/custom-data.md"
) -> dict[str, np.ndarray]:
    """{name: array} of the `required` arrays (all) and the `optional` ones (where present) of the .npz file at `path`.
    Never unpickles: an object array, a single .npy array or a file of another kind is named in one line (exit 3)."""
    with open_regular(path, "rb") as fh:
        head = fh.read(6)
    if head.startswith(NPY):
        raise DataError(
            f"{path}: a single .npy array, not an .npz archive of {' and '.join(required)}; save them with "
            f"np.savez(path, {', '.join(f'{k}=...' for k in required)}) ({doc})"
        )
    if not head.startswith(ZIP):
        raise DataError(
            f"{path}: not an .npz archive (a text or CSV file?); give an .npz file of {' and '.join(required)} ({doc})"
        )
    try:
        with open_regular(path, "rb") as fh, np.load(fh, allow_pickle=False) as f:
            missing = [k for k in required if k not in f.files]
            if missing:
                raise DataError(
                    f"{path}: needs arrays {', '.join(required)} (lacks {', '.join(missing)}; has "
                    f"{', '.join(f.files) or 'none'}); {doc}"
                )
            return {k: _array(f, k, path, doc) for k in tuple(required) + tuple(optional) if k in f.files}
    except DataError:
        raise
    except Exception as err:  # zipfile / numpy format errors
        raise DataError(f"{path}: not a readable .npz array file ({first_line(err)}); {doc}") from None


def _array(archive: np.lib.npyio.NpzFile, key: str, path: str, doc: str) -> np.ndarray:
    try:
        return archive[key]
    except ValueError:  # numpy refuses an object array without pickle (and we never load one with it)
        raise DataError(
            f"{path}: array {key!r} holds Python objects, not numbers or text; save it as a plain array "
            f"(e.g. np.array(values, dtype=str) for names) ({doc})"
        ) from None
