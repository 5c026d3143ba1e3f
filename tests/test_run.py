"""bkd.run: the deferred full-set pass (default mode) gives the statistic the epoch itself would have given."""
import json
import os

import numpy as np
import torch

from bkd.config import TrainConfig, resolve_computation
from bkd.engine import StopFlag, train_epoch
from bkd.outputs import Listener
from bkd.run import build, full_set_pass, weights_snapshot
from bkd.state import MethodState
from bkd.data.custom import from_arrays
from bkd.data.setup import choose_images, custom_source
from tests.cli import run, tiny_flags
from tests.synthetic import make_images


def _trainer():
    images, labels = make_images(120, 4, np.random.RandomState(0))
    data = choose_images(custom_source(from_arrays(images, labels)), 0, 0, 0.1)
    config = TrainConfig(width=4, batch_size=32, eval_batch_size=64)
    torch.manual_seed(0)
    device = torch.device("cpu")
    return build(config, data, device, resolve_computation(config, device), Listener(), log=lambda *a: None), data


def test_deferred_full_set_pass_equals_the_pass_in_its_epoch():
    t, data = _trainer()
    assert t.computation.defer_full_pass  # the default mode
    now, later = MethodState(), MethodState()
    now.stats[3], later.stats[3] = {}, {}
    snapshot = weights_snapshot(t)
    in_epoch = full_set_pass(t, now, 3, StopFlag(), seed=0)  # as if computed right after epoch 3
    train_epoch(*t.nets, t.loaders["train"], t.optimizer, t.precision, epoch=4, n_epoch=9, num_classes=4,
                log=lambda *a: None)  # the networks move on
    after = weights_snapshot(t)
    deferred = full_set_pass(t, later, 3, StopFlag(), seed=0, weights=snapshot)  # epoch 3's pass, run later
    assert torch.equal(in_epoch, deferred)
    for key in ("full", "full_agreed", "full_agreed_prob", "full_probs"):
        assert np.array_equal(now.stats[3][key], later.stats[3][key]), key
    assert all(torch.equal(after["teacher"][k], t.teacher.state_dict()[k]) for k in after["teacher"])  # weights restored
    other = full_set_pass(t, MethodState(stats={5: {}}), 5, StopFlag(), seed=0, weights=snapshot)
    assert not torch.equal(in_epoch, other)  # another epoch draws other augmentations


def test_default_mode_runs_the_full_set_pass_once(synthetic_root, tmp_path):
    trace = tmp_path / "trace.json"
    run("blind_knowledge_dist_training.py", *tiny_flags(synthetic_root, str(tmp_path), n_epoch=9, overfitting_epoch=3,
                                                        trace=str(trace)), cwd=str(tmp_path))
    recorded = json.load(open(trace))
    assert [r["epoch"] for r in recorded["epochs"] if "full_agreement_sha256" in r] == []  # no pass in any warm-up epoch
    assert recorded["overfitting"]["epoch"] == 3 and recorded["overfitting"]["found_at_epoch"] == 5
    agreement = np.load(os.path.join(tmp_path, "cifar10_worst_seed_0", "agreement.npy"))
    from bkd.utils.hashing import array_sha256

    assert recorded["overfitting"]["full_set"]["p_sha256"] == array_sha256(agreement.astype(np.float32))
