import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SHARED_DATA = os.environ.get("BKD_SHARED_DATA", os.path.join(ROOT, "..", "shared", "data"))
# The scripts the tests start run single-threaded (tiny networks gain little from more), so that the
# pytest-xdist workers (pytest.ini) share the cores instead of oversubscribing them. The golden-trace
# replay sets the trace's own thread count.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
# Idle OpenMP threads sleep instead of spinning, so that a multi-threaded script (the replay) is not slowed
# down by the other worker's processes holding a core; the arithmetic is the same.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """A tiny CIFAR-10-like data root: cifar10.npz + CIFAR-10_human.pt."""
    from tests.synthetic import write_dataset

    root = tmp_path_factory.mktemp("synthetic")
    write_dataset(str(root))
    return str(root)


@pytest.fixture(scope="session")
def finished_run(synthetic_root, tmp_path_factory):
    """A completed tiny run whose files must survive every bad invocation (one per test worker: a test that changes a
    run works on a copy, tests/test_bad_input.py's _copy_run)."""
    from tests.cli import digests, run, tiny_flags

    results = str(tmp_path_factory.mktemp("finished"))
    run(
        "blind_knowledge_dist_training.py",
        *tiny_flags(synthetic_root, results, n_epoch=2, noisy_val_freq=1),
        cwd=results,
    )
    run_dir = os.path.join(results, "cifar10_worst_seed_0")
    return run_dir, digests(run_dir)


# The longest modules first, so that the pytest-xdist workers (pytest.ini: one module per worker at a time)
# start on them together instead of finishing one of them alone at the end.
LONGEST_FIRST = (
    "test_reference",
    "test_gpu_check",
    "test_launch",
    "test_durability",
    "test_nothing_silent",
    "test_end_to_end",
    "test_gpu_check_steps",
    "test_custom",
    "test_edges",
    "test_stops",
    "test_review",
    "test_curves",
    "test_compile",
    "test_cuda_path",
    "test_api",
    "test_config",
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.module.__name__.rsplit(".", 1)[-1], len(rank)))
    if not any(item.get_closest_marker("cuda") for item in items):
        return
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(
            reason="needs a CUDA GPU (torch.cuda.is_available() is False here); "
            "benchmarks/gpu_check.py runs these on one"
        )
        for item in items:
            if item.get_closest_marker("cuda"):
                item.add_marker(skip)
