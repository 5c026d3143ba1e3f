"""bkd.run: the deferred full-set pass (default mode) gives the statistic the epoch itself would have given."""

import json
import os

import numpy as np
import pytest
import torch

from bkd.config import TrainConfig
from tests.cli import run, tiny_flags
from tests.synthetic import tiny_run


def test_deferred_full_set_pass_equals_the_pass_in_its_epoch():
    t = tiny_run(TrainConfig(width=4, batch_size=32, eval_batch_size=64, n_epoch=9))
    assert t.computation.defer_full_pass  # the default mode
    snapshot = t.weights()
    t.state.stats[3] = {}
    t.calc_noise_probability(3)  # as if computed right after epoch 3
    in_epoch = t.state.stats[3]
    t.epoch = 4
    t.train()  # the networks move on
    after = t.weights()
    t.state.stats[3] = {}
    t.calc_noise_probability(3, weights=snapshot)  # epoch 3's pass, run later
    for key in ("full", "full_agreed", "full_agreed_prob", "full_probs"):
        assert np.array_equal(in_epoch[key], t.state.stats[3][key]), key
    # weights restored
    assert all(torch.equal(after["teacher"][k], t.teacher.state_dict()[k]) for k in after["teacher"])
    t.state.stats[5] = {}
    t.calc_noise_probability(5, weights=snapshot)
    assert not np.array_equal(in_epoch["full"], t.state.stats[5]["full"])  # another epoch draws other augmentations


@pytest.mark.slow
def test_default_mode_runs_the_full_set_pass_once(synthetic_root, tmp_path):
    trace = tmp_path / "trace.json"
    run(
        "blind_knowledge_dist_training.py",
        *tiny_flags(synthetic_root, str(tmp_path), n_epoch=9, overfitting_epoch=3, trace=str(trace)),
        cwd=str(tmp_path),
    )
    recorded = json.load(open(trace))
    assert [
        r["epoch"] for r in recorded["epochs"] if "full_agreement_sha256" in r
    ] == []  # no pass in any warm-up epoch
    assert recorded["overfitting"]["epoch"] == 3 and recorded["overfitting"]["found_at_epoch"] == 5
    agreement = np.load(os.path.join(tmp_path, "cifar10_worst_seed_0", "agreement.npy"))
    from bkd.utils.hashing import array_sha256

    assert recorded["overfitting"]["full_set"]["p_sha256"] == array_sha256(agreement.astype(np.float32))
