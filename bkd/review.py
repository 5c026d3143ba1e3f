"""The review page (review.html): the images whose labels look wrong, most suspect first, to look at and decide.

    python -m bkd.review RUN_DIR [--top N] [--out FILE]    # again, for a finished run (its data is loaded again)

One self-contained file, written with label_issues.csv (bkd/outputs.py) and by the Python API's result
(LabelIssues.write_review): thumbnails embedded, and a Content-Security-Policy that allows only the page's own script
and style (by their hashes) and images embedded in it, so nothing is requested from any network and it can be mailed
as it is. The page is built by Jinja2, which escapes every name of the data (a class folder or file named `<script>`
is text); its script reads the data from the cards' attributes and writes only text. In the browser: filters (given
class, suggested class, trust group, flagged only, text in the id) whose counts follow; a decision per card (accept
the suggestion, keep the given label, set another class, remove the image), by keyboard or mouse, kept in the browser
per run; Export downloads corrections.csv for `--corrections` (data/corrections.py). docs/custom-data.md walks it.
"""

import base64
import hashlib
import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from bkd.data.datasets import RunData

TOP = 1000  # the most suspect images a page shows by default
HISTOGRAM_BINS = 20
THUMBNAIL_QUALITY = 90  # JPEG: a preview of each image (about a kilobyte at 32x32)
THUMBNAIL_SIZE = 96  # larger images are shrunk to this many pixels a side (smaller ones are enlarged by the page)


@dataclass(frozen=True)
class Header:
    """What the page says of the run above its cards."""

    run: str  # the run's name (its directory's, or what the caller gives)
    overfit_epoch: int | None  # None: no peak of the student's confidence, the last epoch split
    split_epoch: int
    otsu: dict[str, float]  # the full set's Otsu split: threshold, mu1 (lower mean), mu2 (upper mean)
    group_sizes: list[int]  # trust groups 1..4 of every image of the run
    histogram: list[int]  # counts of the agreed probability of the given label, HISTOGRAM_BINS bins over [0, 1]
    num_images: int
    noisy_total: int | None  # labels known to be wrong (clean labels, CIFAR-N); None without clean labels


def header_of(
    run: str,
    overfit_epoch: int | None,
    split_epoch: int,
    otsu: dict[str, float],
    rows: Sequence[dict[str, Any]],
    noisy_total: int | None,
) -> Header:
    """The header of a run whose every image is one of `rows` (label_issue_rows or a label_issues.csv's)."""
    groups = np.bincount([int(r["group"]) for r in rows], minlength=5)[1:5]
    probs = np.array([float(r["given_prob"]) for r in rows], dtype=np.float64)
    histogram = np.histogram(probs, bins=HISTOGRAM_BINS, range=(0.0, 1.0))[0]
    return Header(run, overfit_epoch, split_epoch, otsu, groups.tolist(), histogram.tolist(), len(rows), noisy_total)


def thumbnail(image: np.ndarray) -> str:
    """A data: URI of `image` ((H, W, 3) uint8) as a JPEG."""
    from PIL import Image

    picture = Image.fromarray(np.ascontiguousarray(image)).convert("RGB")
    picture.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.Resampling.BILINEAR)  # (larger images only: shrunk)
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=THUMBNAIL_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def shown_text(text: str) -> str:
    """A name as the page shows it: one that is not valid UTF-8 (a Latin-1 file name, held with lone surrogates) has
    '?' where its undecodable bytes were, as the exported corrections write it (data/corrections.py matches it so)."""
    return text.encode("utf-8", "replace").decode("utf-8")


def page(
    rows: Sequence[dict[str, Any]],
    image_of: Callable[[dict[str, Any]], np.ndarray],
    classes: Sequence[str],
    header: Header,
    clean_of: Callable[[dict[str, Any]], int | None] | None = None,
    top: int = TOP,
) -> str:
    """The page's HTML: the `top` first of `rows` (most suspect first; label_issue_rows or a label_issues.csv's), each
    with the thumbnail of image_of(row) and, where clean labels are known, clean_of(row)."""
    import jinja2

    folder = resources.files("bkd")
    script, style = (folder.joinpath(name).read_text(encoding="utf-8") for name in ("review.js", "review.css"))
    cards = []
    for row in rows[:top]:
        clean = clean_of(row) if clean_of is not None else None
        cards.append(
            dict(
                row,
                id=shown_text(str(row["id"])),
                thumbnail=thumbnail(image_of(row)),
                clean=clean,
                noisy="" if clean is None else int(clean != int(row["given_label"])),
            )
        )
    names = [shown_text(str(name)) for name in classes]
    key = hashlib.sha256(
        repr((header.run, [(c["position"], c["given_label"]) for c in cards])).encode("utf-8", "replace")
    ).hexdigest()[:16]
    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    template = environment.from_string(folder.joinpath("review.html.j2").read_text(encoding="utf-8"))
    return template.render(
        header=header,
        cards=cards,
        classes=names,
        script=script,
        style=style,
        script_hash=_csp_hash(script),
        style_hash=_csp_hash(style),
        data={"key": key, "classes": names, "noisy_total": header.noisy_total, "shown": len(cards)},
        bars=_bars(header),
    )


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


def _bars(header: Header) -> list[dict[str, float]]:
    """The agreement histogram as SVG bars in a 400 x 100 box (numbers only)."""
    top = max(header.histogram) or 1
    width = 400 / len(header.histogram)
    return [
        {
            "x": i * width,
            "width": width - 1,
            "height": 100 * count / top,
            "count": count,
            "low": i / len(header.histogram),
        }
        for i, count in enumerate(header.histogram)
    ]


def write(path: str, html: str) -> None:
    """The page, atomically (a kill leaves the earlier one or this one)."""
    from bkd.utils.files import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", errors="replace") as fh:
        fh.write(html)


def run_page(rows: Sequence[dict[str, Any]], data: "RunData", header: Header, top: int = TOP) -> str:
    """The page of a run over its data (the run's images; its clean labels, where known), rows found by position."""
    index_of = {int(position): i for i, position in enumerate(data.positions)}
    images = data.images
    assert images is not None  # (a run's data, with its images)
    clean = None if data.clean is None else data.clean[data.subset]

    def clean_of(row: dict[str, Any]) -> int | None:
        return None if clean is None else int(clean[index_of[int(row["position"])]])

    return page(rows, lambda row: images[index_of[int(row["position"])]], data.classes, header, clean_of, top)


def review_run(run_dir: str, top: int, out: str) -> str:
    """The page of the finished run in `run_dir`, again, from its label_issues.csv, metrics.json and its data, loaded
    as it was recorded (and checked to be the data it trained on, as the evaluations check it)."""
    from dataclasses import fields

    from bkd import rundir as rd
    from bkd.config import TrainConfig
    from bkd.data.datasets import DataSelection
    from bkd.evaluations import check_split, evaluated_data, evaluating
    from bkd.issues import read_label_issues
    from bkd.utils.errors import DataError, UsageError
    from bkd.utils.files import from_portable

    if top < 1:
        raise UsageError(f"--top {top} must be 1 or more")
    with evaluating(run_dir, needs=(rd.LABEL_ISSUES,)) as metrics:
        check_split(run_dir, metrics)
        recorded = metrics.get("config") or {}
        if recorded.get("api"):
            raise DataError(
                f"{run_dir} was trained by the Python API on arrays, which it did not keep: write its page with "
                "result.write_review(path, images, labels) (docs/custom-data.md)"
            )
        paths = {k: from_portable(recorded.get(k)) for k in ("data_root", "noise_path", "data_file", "corrections")}
        selection = DataSelection(
            dataset=recorded.get("dataset", "cifar10"),
            noise_type=recorded.get("noise_type", "clean"),
            data_root=paths["data_root"] or "~/data",
            noise_path=paths["noise_path"],
            download=False,
            data_file=paths["data_file"],
            image_size=recorded.get("image_size", 32),
            keep_image_size=recorded.get("keep_image_size", False),
            corrections=paths["corrections"],
        )
        config = TrainConfig(**{f.name: recorded[f.name] for f in fields(TrainConfig) if f.name in recorded})
        data = evaluated_data(selection, config, run_dir, metrics)
        rows = read_label_issues(os.path.join(run_dir, rd.LABEL_ISSUES))
        noisy = None if data.truly_noisy is None else int(data.truly_noisy.sum())
        name = os.path.basename(os.path.normpath(run_dir))
        header = header_of(
            name, metrics.get("overfit_epoch"), metrics["split_epoch"], metrics["otsu_full"], rows, noisy
        )
        # written with the run's lock held (shared, as the evaluations'): no --overwrite replaces the run meanwhile
        write(out, run_page(rows, data, header, top))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """python -m bkd.review RUN_DIR [--top N] [--out FILE]: the page of a finished run, again."""
    import argparse  # (the command line stays here: every other function takes plain values)

    from bkd.utils.errors import run_cli

    p = argparse.ArgumentParser(
        prog="python -m bkd.review", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("run_dir", help="a finished run's directory (holding label_issues.csv and metrics.json)")
    p.add_argument("--top", type=int, default=TOP, help=f"the most suspect images shown (default {TOP})")
    p.add_argument("--out", default=None, help="the page's file (default RUN_DIR/review.html)")

    def review(args: Sequence[str] | None) -> None:
        ns = p.parse_args(args)
        out = ns.out or os.path.join(ns.run_dir, "review.html")
        print(f"wrote {review_run(ns.run_dir, ns.top, out)}")

    run_cli(review, argv)


if __name__ == "__main__":
    main()
