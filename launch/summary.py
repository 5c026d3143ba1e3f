"""The challenge's tables over a grid of runs: mean ± std over seeds per label set, and one row per run."""

import csv
import os
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from bkd.report import COLUMN_NAMES, load_run, markdown, summary_values
from bkd.utils.errors import RunDirError, first_line
from bkd.utils.files import atomic_path
from launch.grid import Run, status


def grid_summary(runs: Sequence[Run]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The challenge's tables for a grid (launch.grid.Run list): rows per label set, mean ± std over the
    finished seeds, and one row per run. An unfinished run is listed with its state, never averaged in."""
    per_seed: list[dict[str, Any]] = []
    finished: defaultdict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    pairs: list[tuple[str, str]] = []
    for run in runs:
        if (run.dataset, run.noise_type) not in pairs:
            pairs.append((run.dataset, run.noise_type))
        state = status(run)
        row: dict[str, Any] = {
            "dataset": run.dataset,
            "label set": run.noise_type,
            "seed": run.seed,
            "state": state["state"],
        }
        if state["state"] == "done":
            m = load_run(run.path)
            finished[(run.dataset, run.noise_type)].append(m)
            row.update(summary_values([m]))
        else:
            if state["epoch"] is not None:
                row["state"] += f" (epoch {state['epoch']} of 0..{state['n_epoch'] - 1})"
            row.update({column: "" for column in COLUMN_NAMES})
        per_seed.append(row)
    per_set = []
    for dataset, noise_type in pairs:
        done, total = (
            finished[(dataset, noise_type)],
            sum(1 for r in runs if (r.dataset, r.noise_type) == (dataset, noise_type)),
        )
        per_set.append(
            dict(
                {"dataset": dataset, "label set": noise_type, "seeds": f"{len(done)} of {total}"},
                **summary_values(done),
            )
        )
    return per_set, per_seed


def write_grid_summary(runs: Sequence[Run], prefix: str) -> tuple[str, str]:
    """Write <prefix>.md (per dataset: mean ± std per label set, then the runs) and <prefix>.csv; return the Markdown
    and a line saying where it went, or why it could not be written (the tables are printed either way)."""
    per_set, per_seed = grid_summary(runs)
    columns = COLUMN_NAMES
    text = []
    for dataset in dict.fromkeys(r["dataset"] for r in per_set):
        text += [f"### {dataset}: mean ± std over seeds", ""]
        text += markdown([r for r in per_set if r["dataset"] == dataset], ["label set", "seeds"] + columns)
        text += ["", f"### {dataset}: per run", ""]
        text += markdown([r for r in per_seed if r["dataset"] == dataset], ["label set", "seed", "state"] + columns) + [
            ""
        ]
    try:
        os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
        with atomic_path(prefix + ".md") as tmp, open(tmp, "w") as fh:
            fh.write("\n".join(text))
        with atomic_path(prefix + ".csv") as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["row", "dataset", "label set", "seeds", "seed", "state"] + columns)
            writer.writeheader()
            writer.writerows([dict(r, row="mean ± std") for r in per_set] + [dict(r, row="run") for r in per_seed])
    except (OSError, RunDirError) as err:
        return "\n".join(text), f"== summary not written ({first_line(err)}); --out writes it elsewhere"
    return "\n".join(text), f"== summary written to {prefix}.md and {prefix}.csv"
