"""The original's standard-output lines, verbatim (the golden logs, docs/reference-mode.md), and the prefix of ours.

`training.log`, `learning.log` and `detection.log` keep the authors' line formats so that
parsers of their logs keep working; every line this project adds starts with `[bkd] `.
Epoch numbers are 0-based, as in the original.
"""

from collections.abc import Callable
from typing import Any

import numpy as np

Log = Callable[..., None]  # where a run's lines go: print, or a function that takes print's arguments

OURS = "[bkd] "
HASHES = "#" * 50


def ours(message: str) -> str:
    """A line the original does not print."""
    return OURS + message


# --- start-up lines -------------------------------------------------------------------------
def device_line(device: object) -> str:
    return f"Current device is {device}"


IMAGES_FOUND = "Files already downloaded and verified"
BUILDING, BUILT = "building model...", "building model done"


def label_file_lines(
    dataset: str, key: str, path: str, noisy: np.ndarray, clean: np.ndarray, num_classes: int
) -> list[str]:
    """What the original's CIFAR dataset prints when it loads a CIFAR-N label file (about all of its labels)."""
    prior = np.bincount(noisy, minlength=num_classes) / len(noisy)
    noise_rate = np.sum(noisy != clean) / len(noisy)
    return [
        f"Loaded {key} from {path}.",
        f"The overall noise rate is {1 - np.mean(clean == noisy)}",
        # the original's CIFAR-100 class prints the label key where CIFAR-10 prints the path
        f"noisy labels loaded from {path if dataset == 'cifar10' else key}",
        f"The noisy data ratio in each class is {prior}",
        f"over all noise rate is  {noise_rate}",
    ]


def split_lines(num_train: int, num_val: int) -> list[str]:
    return [f"Train with {num_train} noisy instances.", f"Validate with {num_val} noisy instances."]


# --- training -------------------------------------------------------------------------------
def epoch_start(epoch: int) -> str:
    return f"epoch {epoch}"


def iteration(epoch: int, n_epoch: int, i: int, last_iter: int, loss: float, naive: float, comp: float) -> str:
    return (
        f"epoch: {epoch:3.0f}/{n_epoch - 1:3.0f}\titer: {i:3.0f}/{last_iter:3.0f}\tloss: {loss:8.5f}"
        f"\tnaive_loss: {naive:8.5f}\tcompensation_l2_loss: {comp:8.5f}"
    )


def overfitting_block(overfit_epoch: int) -> list[str]:
    return ["", HASHES, f"overfitting epoch: {overfit_epoch}", HASHES, ""]


def otsu_block(split: dict[str, Any]) -> list[str]:
    return [
        "otsu split performed:",
        f"\tup_mean: {split['mu2']:0.5f}\tup_sigma: {split['sigma2']:0.5f}",
        f"\tlo_mean: {split['mu1']:0.5f}\tlo_sigma: {split['sigma1']:0.5f}",
        f"\tthresh:  {split['threshold']:0.5f}",
        "",
    ]


def new_best(prev_best: float, prev_epoch: int) -> str:
    return f"models saved - new best val_acc!  (prev best: {prev_best:0.2f} on epoch: {prev_epoch})"


def validation(epoch: int, acc: float, best: float, best_epoch: int) -> str:
    return f"epoch: {epoch}\tacc on noisy val_data:  {acc:0.2f}\tbest: {best:0.2f} (epoch: {best_epoch})"


def test(epoch: int, acc: float, best: float, best_epoch: int) -> str:
    return f"epoch: {epoch}\tacc on clean test_data: {acc:0.2f}\tbest: {best:0.2f} (epoch: {best_epoch})"


END_SAVE = "models saved - end of training"


def elapsed(epoch: int, seconds: float) -> str:
    return (
        f"epoch: {epoch}\ttime elapsed: {seconds // 3600:.0f}h {(seconds % 3600) // 60:.0f}m "
        f"{(seconds % 3600) % 60:.0f}s"
    )


# --- learning.py and detection.py -----------------------------------------------------------
def learning(acc: float) -> str:
    return f"Best test acc selected by val is {acc}"


def detection(flagged: int, truly_noisy: int, precision: float, recall: float, fscore: float) -> list[str]:
    return [
        f"{flagged}",
        f"{truly_noisy}",
        f"precision is {precision}",
        f"recall is {recall}",
        f"The f-score is {fscore}",
    ]


def quiet(*lines: object) -> None:
    """A log that writes nothing (the Python API without verbose=True, benchmarks, tests)."""
