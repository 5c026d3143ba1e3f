"""The method's memory across epochs: warm-up records, the split, and a weights-only round trip."""
import io

import numpy as np
import pytest
import torch

from bkd.state import STAT_WINDOW, MethodState


def _epoch_stats(rng, n=200):
    values = np.concatenate([rng.uniform(0.0, 0.2, n // 4), rng.uniform(0.6, 1.0, n - n // 4)])
    return values.astype(np.float32)


def test_split_happens_at_the_peak_with_that_epochs_statistics():
    rng = np.random.RandomState(0)
    state = MethodState()
    tops = [0.1, 0.2, 0.3, 0.6, 0.5, 0.4]
    recorded = {}
    for epoch, top in enumerate(tops):
        train, full = _epoch_stats(rng), _epoch_stats(rng, 250)
        recorded[epoch] = (train, full)
        found = state.record_warmup_epoch(epoch, top, train, full)
        assert found == (3 if epoch == 5 else None)
        assert min(state.stats) >= epoch - STAT_WINDOW + 1
    detected = state.split_at(3)
    assert not state.warmup and state.split_epoch == 3 and state.overfit_epoch == 3
    train, full = recorded[3]
    assert np.array_equal(state.groups == 4, train < state.split["mu1"])
    assert np.array_equal(detected, full < state.full_split["mu1"]) and detected.shape == (250,)
    assert 0 < detected.sum() < 250


def test_state_round_trips_through_weights_only_load():
    rng = np.random.RandomState(1)
    state = MethodState()
    for epoch, top in enumerate([0.1, 0.2, 0.5, 0.3, 0.2, 0.1]):
        state.record_warmup_epoch(epoch, top, _epoch_stats(rng), _epoch_stats(rng))
    state.split_at(2)
    state.val_acc.append([6, 42.0])
    buffer = io.BytesIO()
    torch.save(state.state_dict(), buffer)
    buffer.seek(0)
    restored = MethodState.from_state_dict(torch.load(buffer, weights_only=True))
    assert restored.split == state.split and restored.val_acc == state.val_acc
    assert np.array_equal(restored.groups, state.groups) and np.array_equal(restored.detected, state.detected)
    assert all(np.array_equal(restored.stats[e]["full"], state.stats[e]["full"]) for e in state.stats)


def test_window_proof_found_epoch_is_always_recent():
    """The first peak found after epoch e is e-2 or e-3, so a window of 4 epochs suffices."""
    rng = np.random.RandomState(2)
    for _ in range(2000):
        tops = rng.rand(rng.randint(6, 20)).tolist()
        for e in range(5, len(tops)):
            from bkd.method import find_overfitting_epoch

            found = find_overfitting_epoch(tops[: e + 1])
            if found is not None:
                assert e - found in (2, 3) or e == 5
                assert found >= e - STAT_WINDOW + 1
                break
