"""Plots of one run and a summary table over runs, from the files in run directories.

    python -m bkd.report results/<run> [results/<run> ...] [--summary out/summary]

Per run (matplotlib, optional): `confidence.png` (the student's mean top probability per
epoch, warm-up and robust phase, overfitting epoch marked), `agreement.png` (histogram of the full-set
agreement statistic with the Otsu threshold, the two means and the four groups, split by
truly clean / truly noisy), `accuracy.png` (validation and test accuracy per epoch).
With --summary: `<prefix>.md` and `<prefix>.csv`, one row per (dataset, label set, preset),
mean ± std over seeds.
"""

import csv
import os
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from bkd.utils.files import open_regular, read_json_object

GROUP_COLOURS = {1: "#1a9850", 2: "#91cf60", 3: "#fc8d59", 4: "#d73027"}


def load_run(run_dir: str) -> dict[str, Any]:
    """A run's metrics.json."""
    return read_json_object(os.path.join(run_dir, "metrics.json"))


def confidence_figure(m: dict[str, Any], name: str) -> Any:
    """The student's mean top probability per epoch (0-based, as the logs and split_epoch), the split epoch marked."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    tops = m["mean_top_student"]
    ax.plot(range(len(tops)), tops, marker="o", ms=3, label="warm-up (what the overfitting rule sees)")
    robust = m.get("mean_top_student_all_epochs", [])[len(tops) :]
    if robust:
        ax.plot(
            range(len(tops) - 1, len(tops) + len(robust)),
            [tops[-1]] + robust,
            marker="o",
            ms=3,
            color="grey",
            label="robust phase",
        )
    if m.get("split_epoch") is not None:
        e = m["split_epoch"]
        label = f"overfitting epoch {e}" if not m.get("split_fallback") else f"no peak: split at last epoch {e}"
        ax.axvline(e, color="red", ls="--", label=label)
    ax.set(xlabel="epoch", ylabel="student mean max$_c$ $p_S$ (training batches)", title=name)
    ax.legend(fontsize=8)
    return fig


def plot_run(run_dir: str, truly_noisy: np.ndarray | None = None) -> list[str]:
    """Write the three figures of a run; returns their paths ([] without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install -r requirements-extra.txt)", file=sys.stderr)
        return []
    m = load_run(run_dir)
    name = os.path.basename(os.path.normpath(run_dir))
    paths = [_save(confidence_figure(m, name), run_dir, "confidence.png")]
    agreement_path = os.path.join(run_dir, "agreement.npy")
    if os.path.exists(agreement_path) and m.get("otsu_full"):
        with open_regular(agreement_path, "rb") as fh:
            p = np.load(fh, allow_pickle=False)
        split = m["otsu_full"]
        from bkd.method import assign_groups

        groups = assign_groups(p, split)
        bins = np.linspace(0, 1, 101)
        fig, axes = plt.subplots(
            1, 2 if truly_noisy is not None else 1, figsize=(10 if truly_noisy is not None else 6, 3.5), squeeze=False
        )
        subsets = [("all samples", np.ones(len(p), bool))]
        if truly_noisy is not None:
            subsets = [("truly clean labels", ~truly_noisy), ("truly noisy labels", truly_noisy)]
        for ax, (title, mask) in zip(axes[0], subsets, strict=True):
            data = [p[mask & (groups == g)] for g in (1, 2, 3, 4)]
            ax.hist(
                data,
                bins=bins,
                stacked=True,
                color=[GROUP_COLOURS[g] for g in (1, 2, 3, 4)],
                label=[f"G{g} ({len(d)})" for g, d in zip((1, 2, 3, 4), data, strict=True)],
            )
            for value, style, label in (
                (split["threshold"], "-", "threshold"),
                (split["mu1"], ":", "mu1"),
                (split["mu2"], "--", "mu2"),
            ):
                ax.axvline(value, color="black", ls=style, lw=1, label=f"{label} {value:.3f}")
            ax.set(xlabel="agreed probability of the given label $p_A[y]$", ylabel="images", title=f"{name}: {title}")
            ax.set_yscale("log")
            ax.legend(fontsize=7)
        paths.append(_save(fig, run_dir, "agreement.png"))

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key, label in (("val_acc", "noisy validation"), ("test_acc", "clean test")):
        if m.get(key):
            epochs, acc = zip(*m[key], strict=True)
            ax.plot(epochs, acc, marker="o", ms=3, label=label)
    if m.get("split_epoch") is not None:
        ax.axvline(m["split_epoch"], color="red", ls="--", lw=1, label="split")
    ax.set(xlabel="epoch", ylabel="agreement accuracy (%)", title=name)
    ax.legend(fontsize=8)
    paths.append(_save(fig, run_dir, "accuracy.png"))
    return paths


def _save(fig: Any, run_dir: str, filename: str) -> str:
    path = os.path.join(run_dir, filename)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


# The summary's columns, one set for every summary (this module's and the launcher's, launch/summary.py):
# (column, value of a run's metrics.json, decimals): epochs whole, accuracies in % to 2 decimals, scores to 3.
Metric = Callable[[dict[str, Any]], Any]  # a value of a run's metrics.json


def _detection(key: str) -> Metric:
    return lambda m: (m.get("detection") or {}).get(key)


COLUMNS: list[tuple[str, Metric, int]] = [
    ("overfit epoch", lambda m: m.get("overfit_epoch"), 0),
    ("test acc, best val (%)", lambda m: (m.get("learning") or {}).get("best_test_acc"), 2),
    (
        "test acc, last (%)",
        lambda m: (m.get("learning") or {}).get("last_test_acc", (m.get("test_acc") or [[None, None]])[-1][1]),
        2,
    ),
] + [
    (name, _detection(key), 3)
    for name, key in (
        ("precision", "precision"),
        ("recall", "recall"),
        ("F1", "f1"),
        ("flag-all F1 (floor)", "flag_all_f1"),
        ("AUROC", "auroc"),
        ("AP", "average_precision"),
        ("P@100", "precision_at_100"),
        ("P@1000", "precision_at_1000"),
    )
]
COLUMN_NAMES = [name for name, _, _ in COLUMNS]


def summary_values(runs: Sequence[dict[str, Any]]) -> dict[str, str]:
    """Each column over the runs (metrics.json dicts): mean ± sample std, and how many runs have a value where not
    all."""
    row = {}
    for column, get, digits in COLUMNS:
        values = [get(m) for m in runs if get(m) is not None]
        row[column] = mean_std(values, digits) + (
            f" ({len(values)} of {len(runs)} runs)" if 0 < len(values) < len(runs) else ""
        )
    return row


def summarise(run_dirs: Sequence[str]) -> list[dict[str, Any]]:
    """Rows of mean ± std over seeds, one per (dataset, noise type, preset)."""
    groups: defaultdict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for run_dir in run_dirs:
        m = load_run(run_dir)
        c = m["config"]
        groups[(c["dataset"], c["noise_type"], c.get("preset", "default"))].append(m)
    return [
        dict(
            {"dataset": dataset, "label set": noise_type, "preset": preset, "seeds": len(runs)}, **summary_values(runs)
        )
        for (dataset, noise_type, preset), runs in sorted(groups.items())
    ]


def mean_std(values: Sequence[float], digits: int) -> str:
    """'mean ± sample std' to `digits` decimals ('n/a' without values, the mean alone for one)."""
    if not values:
        return "n/a"
    array = np.asarray(values, dtype=float)
    return f"{array.mean():.{digits}f}" + (f" ± {array.std(ddof=1):.{digits}f}" if len(array) > 1 else "")


def write_summary(rows: Sequence[dict[str, Any]], prefix: str) -> str:
    """<prefix>.csv and <prefix>.md of `rows`; returns the markdown table."""
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    header = list(rows[0])
    with open(prefix + ".csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    lines = markdown(rows, header)
    with open(prefix + ".md", "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return "\n".join(lines)


def markdown(rows: Sequence[dict[str, Any]], header: Sequence[str]) -> list[str]:
    """The lines of a markdown table of `rows` under `header`."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(str(r.get(h, "")) for h in header) + " |" for r in rows
    ]


def truly_noisy(run_dir: str, m: dict[str, Any]) -> np.ndarray | None:
    """Which of a run's training images carry a wrong label (CIFAR-N's clean_label differs), where the run's label file
    is at hand; None where it is not (custom data, a file moved or unreadable): the agreement plot is then not split."""
    from bkd.data.labels import load_noisy_labels
    from bkd.evaluations import saved_subset
    from bkd.utils.errors import DataError, UsageError

    c = m["config"]
    try:
        noisy, clean = load_noisy_labels(c["dataset"], c["noise_type"], c.get("noise_path"), download=False)
    except (DataError, UsageError, OSError):
        return None
    subset = saved_subset(run_dir)
    if subset is not None:
        noisy, clean = noisy[subset], clean[subset]
    return noisy != clean


def main(argv: Sequence[str] | None = None) -> None:
    """python -m bkd.report: plots of runs, and a summary table over them."""
    import argparse  # (the command line stays here: every other function takes plain values)

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run directories (holding metrics.json)")
    p.add_argument("--summary", help="write <SUMMARY>.md and <SUMMARY>.csv over all runs")
    p.add_argument("--no_plots", action="store_true")
    args = p.parse_args(argv)
    missing = [r for r in args.runs if not os.path.exists(os.path.join(r, "metrics.json"))]
    if missing:
        p.error(f"no metrics.json in {', '.join(missing)}; pass run directories of finished trainings")
    if not args.no_plots:
        for run_dir in args.runs:
            for path in plot_run(run_dir, truly_noisy(run_dir, load_run(run_dir))):
                print(f"wrote {path}")
    if args.summary:
        print(write_summary(summarise(args.runs), args.summary))
        print(f"wrote {args.summary}.md and {args.summary}.csv")


if __name__ == "__main__":
    main()
