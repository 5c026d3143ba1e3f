"""BKD's detection as a ranked list of label issues (label_issues.csv), for data without clean labels.

One row per training image, most suspect first: the lower the probability that teacher and
student agree on the given label (pA[y] of the full-set pass at the split), the more suspect.
`group` is the Otsu trust group (1 most trusted .. 4 least), `flagged` is group 4 (detection.npy).
"""

import csv
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

from bkd.utils.files import atomic_path, open_regular

if TYPE_CHECKING:
    from bkd.data.datasets import RunData
    from bkd.state import Split

COLUMNS = (
    "rank",
    "position",
    "id",
    "given_label",
    "given_name",
    "given_prob",
    "agreed_label",
    "agreed_name",
    "agreed_prob",
    "group",
    "flagged",
)


# Label-issue ranking: ascending agreed probability of the given label (ties keep the data's order).
def rank_label_issues(given_prob: ArrayLike) -> np.ndarray:
    """Indices of the images, most suspect label first (lowest pA[y]; ties in the data's order)."""
    return np.argsort(np.asarray(given_prob), kind="stable")


def label_issue_rows(split: "Split", data: "RunData") -> list[dict[str, Any]]:
    """The ranked table of `split` (a bkd.state.Split: one entry per image of the run) over `data` (its
    bkd.data.datasets.RunData: the given labels, class names, ids, and the images' positions in the data as given,
    which the table shows: x_train's indices, or the folder's sorted order), most suspect first: a dict of COLUMNS
    per image, and `index`, the image's index in the run (its entry in split's arrays and in data.images)."""
    given, given_prob, classes, positions = data.labels, split.label_prob, data.classes, data.positions
    ids, agreed, agreed_prob, groups = data.ids[data.subset], split.agreed, split.agreed_prob, split.groups
    return [
        {
            "rank": rank,
            "position": int(positions[i]),
            "id": ids[i],
            "given_label": int(given[i]),
            "given_name": classes[given[i]],
            "given_prob": float(given_prob[i]),
            "agreed_label": int(agreed[i]),
            "agreed_name": classes[agreed[i]],
            "agreed_prob": float(agreed_prob[i]),
            "group": int(groups[i]),
            "flagged": int(groups[i] == 4),
            "index": int(i),
        }
        for rank, i in enumerate(rank_label_issues(given_prob), 1)
    ]


def write_label_issues(path: str, rows: list[dict[str, Any]]) -> None:
    """label_issues.csv of `rows` (label_issue_rows), probabilities to six decimals."""
    with atomic_path(path) as tmp:
        # file and folder names that are not valid UTF-8 (Latin-1 names of old archives) are written as the bytes the
        # file system holds (surrogateescape, Python's own decoding of such names): the table names every file exactly
        with open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as fh:
            writer = csv.writer(fh)
            writer.writerow(COLUMNS)
            for row in rows:
                writer.writerow([f"{row[c]:.6f}" if c.endswith("_prob") else row[c] for c in COLUMNS])


def read_label_issues(path: str) -> list[dict[str, Any]]:
    """The rows of a label_issues.csv as a list of dicts (numbers converted)."""
    with open_regular(path, newline="", encoding="utf-8", errors="surrogateescape") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        for key in ("rank", "position", "given_label", "agreed_label", "group", "flagged"):
            row[key] = int(row[key])
        for key in ("given_prob", "agreed_prob"):
            row[key] = float(row[key])
    return rows
