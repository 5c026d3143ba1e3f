"""The original's standard-output lines, verbatim (the golden logs, docs/reference-mode.md), and the prefix of ours.

`training.log`, `learning.log` and `detection.log` keep the authors' line formats so that
parsers of their logs keep working; every line this project adds starts with `[bkd] `.
Epoch numbers are 0-based, as in the original.
"""

import numpy as np

OURS = "[bkd] "
HASHES = "#" * 50


def ours(message):
    """A line the original does not print."""
    return OURS + message


# --- start-up lines -------------------------------------------------------------------------
def device_line(device):
    return f"Current device is {device}"


IMAGES_FOUND = "Files already downloaded and verified"
BUILDING, BUILT = "building model...", "building model done"


def label_file_lines(dataset, key, path, noisy, clean, num_classes):
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


def split_lines(num_train, num_val):
    return [f"Train with {num_train} noisy instances.", f"Validate with {num_val} noisy instances."]


# --- training -------------------------------------------------------------------------------
def epoch_start(epoch):
    return f"epoch {epoch}"


def iteration(epoch, n_epoch, i, last_iter, loss, naive, comp):
    return (
        f"epoch: {epoch:3.0f}/{n_epoch - 1:3.0f}\titer: {i:3.0f}/{last_iter:3.0f}\tloss: {loss:8.5f}"
        f"\tnaive_loss: {naive:8.5f}\tcompensation_l2_loss: {comp:8.5f}"
    )


def overfitting_block(overfit_epoch):
    return ["", HASHES, f"overfitting epoch: {overfit_epoch}", HASHES, ""]


def otsu_block(split):
    return [
        "otsu split performed:",
        f"\tup_mean: {split['mu2']:0.5f}\tup_sigma: {split['sigma2']:0.5f}",
        f"\tlo_mean: {split['mu1']:0.5f}\tlo_sigma: {split['sigma1']:0.5f}",
        f"\tthresh:  {split['threshold']:0.5f}",
        "",
    ]


def new_best(prev_best, prev_epoch):
    return f"models saved - new best val_acc!  (prev best: {prev_best:0.2f} on epoch: {prev_epoch})"


def validation(epoch, acc, best, best_epoch):
    return f"epoch: {epoch}\tacc on noisy val_data:  {acc:0.2f}\tbest: {best:0.2f} (epoch: {best_epoch})"


def test(epoch, acc, best, best_epoch):
    return f"epoch: {epoch}\tacc on clean test_data: {acc:0.2f}\tbest: {best:0.2f} (epoch: {best_epoch})"


END_SAVE = "models saved - end of training"


def elapsed(epoch, seconds):
    return (
        f"epoch: {epoch}\ttime elapsed: {seconds // 3600:.0f}h {(seconds % 3600) // 60:.0f}m "
        f"{(seconds % 3600) % 60:.0f}s"
    )


# --- learning.py and detection.py -----------------------------------------------------------
def learning(acc):
    return f"Best test acc selected by val is {acc}"


def detection(flagged, truly_noisy, precision, recall, fscore):
    return [
        f"{flagged}",
        f"{truly_noisy}",
        f"precision is {precision}",
        f"recall is {recall}",
        f"The f-score is {fscore}",
    ]


def quiet(*lines):
    """A log that writes nothing (the Python API without verbose=True, benchmarks, tests)."""
