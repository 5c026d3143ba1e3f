"""The method's memory across epochs: warm-up records, the split, and a weights-only round trip."""

import io

import numpy as np
import torch

from bkd.method import first_detectable_epoch, may_still_pick
from bkd.state import MethodState


def _epoch_stats(rng, n=200):
    values = np.concatenate([rng.uniform(0.0, 0.2, n // 4), rng.uniform(0.6, 1.0, n - n // 4)])
    return values.astype(np.float32)


def _warmup(state, tops, rng, forced=None):
    """Feed warm-up epochs as the training loop does: no full-set pass in the epoch that finds the peak."""
    recorded = {}
    for epoch, top in enumerate(tops):
        train = _epoch_stats(rng)
        found = state.record_warmup_epoch(epoch, top, train, forced=forced)
        if found is not None:
            return epoch, found, recorded
        full = _epoch_stats(rng, 250)
        state.add_full_stat(epoch, full)
        recorded[epoch] = (train, full)
    return None, None, recorded


def test_split_happens_at_the_peak_with_that_epochs_statistics():
    state = MethodState()
    at, found, recorded = _warmup(state, [0.1, 0.2, 0.3, 0.6, 0.5, 0.4], np.random.RandomState(0))
    assert (at, found) == (5, 3) and state.overfit_epoch == 3
    assert 5 not in recorded and sorted(state.stats) == [e for e in range(6) if may_still_pick(e, at)] == [
        0,
        1,
        2,
        3,
        4,
        5,
    ]
    detected = state.split_at(3)
    assert not state.warmup and state.split_epoch == 3
    train, full = recorded[3]
    assert np.array_equal(state.groups == 4, train < state.split["mu1"])
    assert np.array_equal(detected, full < state.full_split["mu1"]) and detected.shape == (250,)
    assert np.array_equal(detected, state.full_groups == 4) and 0 < detected.sum() < 250


def test_forced_overfitting_epoch_is_acted_upon_when_the_rule_could_first_find_it():
    for forced in (0, 2, 7):
        state = MethodState()
        at, found, _ = _warmup(state, [0.5] * 12, np.random.RandomState(1), forced=forced)  # a flat curve: no peak
        assert (at, found) == (first_detectable_epoch(forced), forced)
        state.split_at(forced)  # its statistics are still kept
        assert not state.warmup


def test_state_round_trips_through_weights_only_load():
    state = MethodState()
    _warmup(state, [0.1, 0.2, 0.5, 0.3, 0.2, 0.1], np.random.RandomState(1))
    state.split_at(2)
    state.val_acc.append([6, 42.0])
    buffer = io.BytesIO()
    torch.save(state.state_dict(), buffer)
    buffer.seek(0)
    restored = MethodState.from_state_dict(torch.load(buffer, weights_only=True))
    assert restored.split == state.split and restored.val_acc == state.val_acc
    assert np.array_equal(restored.groups, state.groups) and np.array_equal(restored.detected, state.detected)
    assert all(
        np.array_equal(restored.stats[e]["full"], state.stats[e]["full"])
        for e in state.stats
        if "full" in state.stats[e]
    )


def test_the_rule_only_picks_epochs_whose_statistics_are_kept():
    """The first peak i is found after epoch e = max(i + 2, 5), so may_still_pick(i, e) holds: its statistics (and, for
    the deferred full-set pass, its weights) were kept; and the state keeps nothing else."""
    rng = np.random.RandomState(2)
    picked = 0
    for _ in range(2000):
        tops = rng.rand(rng.randint(6, 20)).tolist()
        state = MethodState()
        for e, top in enumerate(tops):
            found = state.record_warmup_epoch(e, top, np.zeros(3, np.float32))
            assert sorted(state.stats) == [k for k in range(e + 1) if may_still_pick(k, e)]
            if found is not None:
                assert e == first_detectable_epoch(found) and found in state.stats
                picked += 1
                break
    assert picked > 1000
