"""A corrections file (`--corrections`, the API's `corrections=`): labels a person decided, applied before training.

CSV with a header: `id` or `position` (which image: its identifier, e.g. the file name in an image folder, or its
position in the data), `new_label` (a class index, or `remove`: the image is not trained on), and optionally
`given_label` (the label the file was decided against, which must still be the image's). The review page
(bkd/review.py) exports `id,position,given_label,new_label`; a hand-written file may hold `id` (or `position`) and
`new_label` alone. Every problem is one line (exit 2) and nothing is trained: a missing column, an id or position the
data does not have, a label outside its classes, an image named twice, a given label that is no longer the image's.
"""

import csv
from dataclasses import dataclass

import numpy as np

from bkd.utils.errors import UsageError
from bkd.utils.files import open_regular, shown
from bkd.utils.hashing import file_sha256

REMOVE = "remove"


@dataclass(frozen=True)
class Corrections:
    """What a corrections file decides, by position in the data: a new label for some images, and images removed."""

    relabel: dict[int, int]
    remove: frozenset[int]
    sha256: str  # of the file, as metrics.json records it and a resumed run must find it again


def read_corrections(path: str, ids: np.ndarray, given: np.ndarray, num_classes: int) -> Corrections:
    """The corrections in `path` for data of these `ids` and `given` labels, checked (one line, exit 2)."""
    name = f"--corrections {shown(path)}"
    try:
        with open_regular(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as fh:
            reader = csv.DictReader(fh)
            columns = set(reader.fieldnames or ())
            rows = list(reader)
    except FileNotFoundError:
        raise UsageError(f"{name}: no such file") from None
    except (OSError, csv.Error, UnicodeError) as err:
        raise UsageError(f"{name}: not a readable CSV file ({err})") from None
    if "new_label" not in columns or not columns & {"id", "position"}:
        raise UsageError(
            f"{name}: needs the columns id (or position) and new_label; it has {', '.join(sorted(columns)) or 'none'} "
            "(the review page's Export writes id,position,given_label,new_label)"
        )
    by_id = {str(image_id): position for position, image_id in enumerate(ids)}
    relabel: dict[int, int] = {}
    remove: set[int] = set()
    for line, row in enumerate(rows, 2):  # (line 1: the header)
        where = f"{name}, line {line}"
        position = _position(row, by_id, len(given), where)
        if position in relabel or position in remove:
            raise UsageError(f"{where}: image {_image(row, position)} is named twice; keep one decision for it")
        if "given_label" in columns and (row.get("given_label") or "").strip():
            _check_given(row["given_label"], int(given[position]), _image(row, position), where)
        new = (row.get("new_label") or "").strip()
        if new.lower() == REMOVE:
            remove.add(position)
        else:
            relabel[position] = _label(new, num_classes, where)
    return Corrections(relabel, frozenset(remove), file_sha256(path))


def _position(row: dict[str, str], by_id: dict[str, int], num_images: int, where: str) -> int:
    image_id = row.get("id")
    if image_id is not None and image_id != "":
        if image_id not in by_id:
            raise UsageError(f"{where}: id {image_id!r} is not an image of the data (a file of another data set?)")
        position = by_id[image_id]
        if (row.get("position") or "").strip() not in ("", str(position)):
            raise UsageError(
                f"{where}: id {image_id!r} is the image at position {position}, not {row['position'].strip()}"
            )
        return position
    text = (row.get("position") or "").strip()
    if not text.isdigit() or int(text) >= num_images:
        raise UsageError(f"{where}: position {text!r} is not one of the data's 0..{num_images - 1}")
    return int(text)


def _label(text: str, num_classes: int, where: str) -> int:
    if not text.lstrip("-").isdigit() or not 0 <= int(text) < num_classes:
        raise UsageError(f"{where}: new_label {text!r} is neither a class index 0..{num_classes - 1} nor {REMOVE}")
    return int(text)


def _check_given(text: str, given: int, image: str, where: str) -> None:
    if text.strip() != str(given):
        raise UsageError(
            f"{where}: given_label {text.strip()} of image {image} is not its label ({given}): the file was decided "
            "against other labels (another label set, or corrections applied already?)"
        )


def _image(row: dict[str, str], position: int) -> str:
    return repr(row["id"]) if row.get("id") else f"at position {position}"
