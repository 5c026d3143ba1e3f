import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SHARED_DATA = os.environ.get("BKD_SHARED_DATA", os.path.join(ROOT, "..", "shared", "data"))


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """A tiny CIFAR-10-like data root: cifar10.npz + CIFAR-10_human.pt."""
    from tests.synthetic import write_dataset

    root = tmp_path_factory.mktemp("synthetic")
    write_dataset(str(root))
    return str(root)


@pytest.fixture(scope="session")
def local_grid(synthetic_root, tmp_path_factory):
    """The tiny grid run by the local launcher, with cifar10_worst_seed_1 failing (its directory holds a foreign
    file). Returns (results dir, the launcher's CompletedProcess). Later tests remove the file and relaunch."""
    from tests.cli import launch, local_grid_flags

    results = str(tmp_path_factory.mktemp("grid"))
    foreign = os.path.join(results, "cifar10_worst_seed_1")
    os.makedirs(foreign)
    with open(os.path.join(foreign, "detection.npy"), "w") as fh:
        fh.write("not ours")
    return results, launch(*local_grid_flags(results, synthetic_root))


def complete_local_grid(results, data_root):
    """Finish the local grid (idempotent: only what is missing runs)."""
    from tests.cli import launch, local_grid_flags

    foreign = os.path.join(results, "cifar10_worst_seed_1", "detection.npy")
    if os.path.exists(foreign) and open(foreign, "rb").read() == b"not ours":
        os.remove(foreign)
    return launch(*local_grid_flags(results, data_root), check_code=0)
