"""What learning.py and detection.py check before they read a run: a finished run, its files, and its data.

The gate (`evaluating`) holds the run directory's lock shared: evaluations of one run go together (each merges its
result into metrics.json under utils.files.update_json's lock), a training of it neither runs beside them nor starts.
"""

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np

from bkd import rundir as rd
from bkd.resume import check_same_data
from bkd.utils import logfmt
from bkd.utils.errors import DataError, RunDirError, first_line
from bkd.utils.files import open_regular, read_json_object
from bkd.utils.logfmt import Log

if TYPE_CHECKING:
    from bkd.config import TrainConfig
    from bkd.data.datasets import DataSelection, RunData

TRAINING = "still training (its lock is held); wait until it finishes, then run this again"


@contextmanager
def evaluating(run_dir: str, needs: Sequence[str], log: Log = print) -> Iterator[dict[str, Any]]:
    """The directory holds a finished run with the files this evaluation `needs`, and its metrics.json can take results;
    yields that metrics.json, the run's lock held shared. An --overwrite killed before its new run completed an epoch is
    undone first (the run it replaced is put back, with a notice), as the next training would."""
    if not os.path.isdir(run_dir):
        raise DataError(f"{run_dir}: no such run directory; train this run first (blind_knowledge_dist_training.py)")
    rd.check_writable(run_dir, f"the results go into its {rd.METRICS}: make it writable")
    run = rd.RunDir(run_dir)
    if os.path.isdir(run.file(rd.PREVIOUS)):  # the repair needs the directory alone
        run.acquire(TRAINING)
        run.close()
    run.acquire(TRAINING, shared=True)
    try:
        for notice in run.notices:
            log(logfmt.ours(notice))
        metrics = read_json_object(run.file(rd.METRICS))
        check_finished(run, metrics, needs)
        yield metrics
    finally:
        run.close()


def check_finished(run: rd.RunDir, metrics: dict[str, Any], needs: Sequence[str]) -> None:
    """One line if the directory holds no finished run with the files an evaluation `needs`: exit 4 where it holds no
    run or an unfinished one, exit 3 naming a file that is missing or damaged. The resume state is not needed."""
    if run.has(rd.INCOMPLETE) or not (metrics or run.existing_artefacts()):
        held = "the start of a run that completed no epoch" if run.has(rd.INCOMPLETE) else "no run"
        raise RunDirError(
            f"{run.path} holds {held}, no result: train it (blind_knowledge_dist_training.py with this run's "
            "flags), then run this again"
        )
    if not metrics:
        raise DataError(
            f"{run.file(rd.METRICS)} is missing: it records whether the run finished and what data it was "
            "trained on; put it back, or train the run again (--overwrite)"
        )
    done, n_epoch = rd.recorded_progress(metrics)
    if done is None or n_epoch is None:
        recorded = metrics.get("epochs_completed"), (metrics.get("config") or {}).get("n_epoch")
        raise DataError(
            f"{run.file(rd.METRICS)}: epochs_completed {recorded[0]!r} and config.n_epoch {recorded[1]!r} must "
            "be whole numbers (was it edited?); put the run's own metrics.json back, or train the run again "
            "(--overwrite)"
        )
    if done < n_epoch:
        raise RunDirError(
            f"{run.path} holds an unfinished run (epochs 0..{done - 1} of 0..{n_epoch - 1} completed): finish "
            "it with its training command and --resume, then run this again"
        )
    missing = [name for name in needs if not run.has(name)]
    if missing:
        raise DataError(
            f"{run.path}: {', '.join(missing)} missing, which this evaluation reads; put "
            f"{'it' if len(missing) == 1 else 'them'} back, or train the run again (--overwrite)"
        )


def check_split(run_dir: str, metrics: dict[str, Any]) -> None:
    """detection.py: a split recorded (metrics.json is written after the split's files, with its epoch)."""
    if metrics.get("split_epoch") is None:
        present = [name for name in rd.SPLIT_FILES if os.path.exists(os.path.join(run_dir, name))]
        raise DataError(
            f"{run_dir}: metrics.json records no split, so {', '.join(present) or 'its split files'} "
            "cannot be trusted (the training stopped while writing them?); resume the training with --resume "
            "to redo the split"
        )


def saved_subset(run_dir: str) -> np.ndarray | None:
    """The subset a run used (train_subset.npy), or None for the whole training set; checked against the data by
    bkd.data.datasets.input_dataset."""
    path = os.path.join(run_dir, rd.SUBSET)
    if not os.path.exists(path):
        return None
    try:
        with open_regular(path, "rb") as fh:
            subset = np.load(fh, allow_pickle=False)
    except Exception as err:
        raise DataError(
            f"{path}: unreadable ({first_line(err)}); truncated? Train the run again (--overwrite)"
        ) from None
    if subset.ndim != 1 or not np.issubdtype(subset.dtype, np.integer) or len(subset) == 0:
        raise DataError(
            f"{path}: holds {subset.dtype} {subset.shape}, not the run's training-image indices; "
            "train the run again (--overwrite)"
        )
    return subset


def evaluated_data(
    selection: "DataSelection", config: "TrainConfig", run_dir: str, metrics: dict[str, Any], images: bool = True
) -> "RunData":
    """learning.py's and detection.py's data: the run's (its subset), checked to be the data it was trained on, with the
    original's start-up lines printed. Without `images`, labels only (training checked them against the images), with
    the whole run as the "training split", as the original's detection.py loads it."""
    import dataclasses

    from bkd.data.datasets import input_dataset

    if not images:
        config = dataclasses.replace(config, val_ratio=0.0)
    check_run_selection(run_dir, metrics, selection)  # (before loading: another data set's files may not be here)
    data = input_dataset(selection, config, subset=saved_subset(run_dir), with_images=images)
    check_run_data(run_dir, metrics, data.fingerprint())
    for line in data.banner:
        print(line)
    return data


def check_run_selection(run_dir: str, metrics: dict[str, Any], selection: "DataSelection") -> None:
    """The evaluation asks for the run's data set and label set (exit 3), before it loads anything."""
    config = metrics.get("config") or {}
    keys = ("dataset", "noise_type") if not selection.custom else ("dataset",)  # custom data: no label sets
    for key in keys:
        if key in config and config[key] != getattr(selection, key):
            raise DataError(
                f"--{key} {getattr(selection, key)}: the run in {run_dir} was trained with --{key} {config[key]}; "
                f"give the flags it was trained with, or the run directory of a {getattr(selection, key)} run"
            )


def check_run_data(run_dir: str, metrics: dict[str, Any], fingerprint: dict[str, Any]) -> None:
    """The evaluation's data is the run's: its fingerprint is the one recorded (exit 3)."""
    recorded = metrics.get("data")
    if not isinstance(recorded, dict):
        raise DataError(
            f"{run_dir}/metrics.json records no data fingerprint (an earlier version of this project wrote it), "
            "so what this evaluates cannot be checked; train the run again (--overwrite)"
        )
    check_same_data(
        recorded,
        {k: v for k, v in fingerprint.items() if k != "split"},  # (the evaluations' own split)
        "evaluate it with the data and flags it was trained with (--data_root, --noise_path, --data_file, "
        "--subset, --seed)",
        what=f"the run in {run_dir}",
    )
