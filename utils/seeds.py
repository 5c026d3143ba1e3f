"""Seeds and random number generator states: the run seeds the original's three generators; resume restores them."""

import contextlib
import random
from collections.abc import Iterator
from typing import Any, cast

import numpy as np
import torch

from bkd.utils.devices import cuda_index


def set_global_seeds(seed: int) -> None:
    """Seed Python's `random`, numpy's global RNG and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


@contextlib.contextmanager
def preserved_global_rng() -> Iterator[None]:
    """Leave Python's, numpy's and torch's global generators (CUDA's too, where present) as they were found.

    (Seeding torch seeds CUDA too, lazily, at its first use: so where CUDA is present its state is read here, which
    starts CUDA, and put back after.)"""
    state = (
        random.getstate(),
        np.random.get_state(),
        torch.get_rng_state(),
        torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    )
    try:
        yield
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])
        torch.set_rng_state(state[2])
        if state[3] is not None:
            torch.cuda.set_rng_state_all(state[3])


def rng_state(device: torch.device) -> dict[str, Any]:
    """Every random number generator state the training depends on (for exact resume): the run device's CUDA one."""
    kind, keys, pos, has_gauss, gauss = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(cuda_index(device))
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Put back what rng_state recorded (the CUDA generator only where the run is on CUDA)."""
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], cuda_index(device))
