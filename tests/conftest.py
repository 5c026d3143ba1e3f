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
