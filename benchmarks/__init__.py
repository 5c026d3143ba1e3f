"""Benchmarks and evidence (docs/performance.md and 'Results'); each module runs as a script and writes to results/."""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the shared data of this project's machines: CIFAR-10 images (cifar10-jpeg/) and the CIFAR-N label files (cifar-n/)
SHARED = os.environ.get("BKD_SHARED_DATA", os.path.join(ROOT, "..", "shared", "data"))


def cifar10n_flags(shared):
    """The scripts' data flags for the shared CIFAR-10 images and CIFAR-10N label file, never downloading."""
    return [
        "--data_root",
        os.path.join(shared, "cifar10-jpeg"),
        "--no_download",
        "--noise_path",
        os.path.join(shared, "cifar-n", "CIFAR-10_human.pt"),
    ]
