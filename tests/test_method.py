"""The pieces of the method against hand-computed values."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bkd.method import (
    agreement,
    assign_groups,
    compensation_loss,
    detect_overfitting_epoch,
    first_detectable_epoch,
    one_hot,
    otsu,
    predict,
    robust_targets,
    teacher_loss,
)
from bkd.utils.metrics import detection_scores


def test_compensation_loss_value_skips_labelled_class():
    zt = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    zs = torch.tensor([[0.0, 0.0, 0.0], [1.0, -1.0, 2.0]])
    y = torch.tensor([2, 0])
    # sample 0 keeps classes 0, 1: 1 + 4; sample 1 keeps classes 1, 2: 1 + 4; denominator B*C-1 = 5
    assert compensation_loss(zt, zs, one_hot(y, 3)).item() == pytest.approx(10 / 5)


def test_compensation_loss_ignores_labelled_logit_and_trains_both():
    zt = torch.randn(4, 5, requires_grad=True)
    zs = torch.randn(4, 5, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3])
    loss = compensation_loss(zt, zs, one_hot(y, 5))
    loss.backward()
    rows = torch.arange(4)
    assert torch.all(zt.grad[rows, y] == 0) and torch.all(zs.grad[rows, y] == 0)
    assert zt.grad.abs().sum() > 0 and zs.grad.abs().sum() > 0
    # changing only the labelled logits leaves the loss unchanged
    zt2 = zt.detach().clone()
    zt2[rows, y] += 100
    assert compensation_loss(zt2, zs.detach(), one_hot(y, 5)).item() == pytest.approx(loss.item())


def test_agreement_is_normalised_product():
    pt = torch.tensor([[0.5, 0.25, 0.25]])
    ps = torch.tensor([[0.2, 0.6, 0.2]])
    expected = torch.tensor([[0.1, 0.15, 0.05]]) / 0.3
    assert torch.allclose(agreement(pt, ps), expected)


def test_predict_is_argmax_of_agreement_not_of_either_network():
    zt = torch.log(torch.tensor([[0.5, 0.4, 0.1]]))
    zs = torch.log(torch.tensor([[0.3, 0.6, 0.1]]))
    # teacher says 0, student says 1, agreement 0.15 vs 0.24 -> 1
    assert predict(agreement(zt.softmax(dim=1), zs.softmax(dim=1))).tolist() == [1]
    zs = torch.log(torch.tensor([[0.45, 0.45, 0.1]]))
    assert predict(agreement(zt.softmax(dim=1), zs.softmax(dim=1))).tolist() == [0]


@pytest.mark.parametrize(
    "values, expected",
    [
        ([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], None),  # rising: no peak
        ([0.1, 0.2, 0.3], None),  # fewer than 6 values
        ([0.1, 0.2, 0.5, 0.3, 0.2], None),  # a peak, but only 5 values
        ([0.1, 0.2, 0.5, 0.3, 0.2, 0.1], 2),
        ([0.1, 0.2, 0.3, 0.6, 0.5, 0.4], 3),
        ([0.1, 0.2, 0.5, 0.5, 0.2, 0.1], None),  # plateau: not strictly greater
        ([0.1, 0.2, 0.5, 0.4, 0.6, 0.1, 0.0], 4),  # 2 is not above 4; 4 is
        ([0.9, 0.8, 0.5, 0.4, 0.3, 0.2], None),  # maximum at the start is not checked
        ([0.1, 0.2, 0.3, 0.4, 0.7, 0.6], None),  # last two epochs cannot be peaks yet
        ([0.1, 0.3, 0.2, 0.3, 0.2, 0.4, 0.3, 0.2], 5),  # +-1 bumps are not +-2 peaks
    ],
)
def test_overfitting_epoch_rule(values, expected):
    assert detect_overfitting_epoch(values) == expected


def _bimodal(n_low=600, n_high=400, seed=0):
    rng = np.random.RandomState(seed)
    return np.clip(np.concatenate([rng.normal(0.15, 0.03, n_low), rng.normal(0.8, 0.05, n_high)]), 0, 1)


def test_otsu_split_of_bimodal_sample():
    values = _bimodal()
    split = otsu(values)
    assert 0.15 < split["threshold"] < 0.8  # between the modes
    low, high = values[values < split["threshold"]], values[values >= split["threshold"]]
    assert len(low) == 600 and len(high) == 400
    # means and sigmas are those of the bin left edges on each side (float32 arithmetic)
    assert split["mu1"] == pytest.approx(np.mean(np.floor(low * 1000) / 1000), abs=1e-6)
    assert split["mu2"] == pytest.approx(np.mean(np.floor(high * 1000) / 1000), abs=1e-6)
    assert split["sigma1"] == pytest.approx(np.std(np.floor(low * 1000) / 1000), abs=1e-6)
    assert split["sigma2"] == pytest.approx(np.std(np.floor(high * 1000) / 1000), abs=1e-6)


def test_otsu_split_is_the_per_cut_definition_in_float32():
    """Every cut scored one by one in float32 from the definition (docs/method.md, 'The split'); the first best cut
    wins."""
    values = torch.from_numpy(np.random.RandomState(3).beta(0.7, 1.4, 500).astype(np.float32))
    counts = torch.histc(values, 1000, 0, 1)
    mu, best, best_s = values.mean(), -math.inf, None
    for s in range(2, 998):
        n1, n2 = counts[:s].sum(), counts[s:].sum()
        if n1 == 0 or n2 == 0:
            continue
        e1, e2 = torch.arange(0, s) / 1000, torch.arange(s, 1000) / 1000
        m1, m2 = (counts[:s] * e1).sum() / n1, (counts[s:] * e2).sum() / n2
        s1 = ((counts[:s] * (e1 - m1) ** 2).sum() / n1).clamp(1e-5).sqrt()
        s2 = ((counts[s:] * (e2 - m2) ** 2).sum() / n2).clamp(1e-5).sqrt()
        q = float((n1 * (m1 - mu) ** 2 + n2 * (m2 - mu) ** 2) / (n1 * s1 + n2 * s2))
        if q > best:
            best, best_s, means = q, s, (m1.item(), m2.item(), s1.item(), s2.item())
    split = otsu(values.numpy())
    assert split["threshold"] == float(np.float32(best_s / 1000))  # float32, as the original's s / 1000 tensor
    assert (split["mu1"], split["mu2"], split["sigma1"], split["sigma2"]) == means
    assert split["score"] == best


def test_otsu_split_with_all_values_in_one_bin_takes_the_first_cut():
    """No cut has values on both sides (the original crashes): the first cut, NaN means, every value in group 2."""
    values = np.full(10, 0.5)
    split = otsu(values)
    assert split["threshold"] == float(np.float32(0.002)) and split["score"] == -1e7
    assert all(np.isnan(split[k]) for k in ("mu1", "mu2", "sigma1", "sigma2"))
    assert assign_groups(values, split).tolist() == [2] * 10


def test_groups_follow_threshold_and_means():
    split = {"threshold": 0.5, "mu1": 0.2, "mu2": 0.8}
    values = np.array([0.1, 0.2, 0.3, 0.49, 0.5, 0.7, 0.8, 0.95])
    assert assign_groups(values, split).tolist() == [4, 3, 3, 3, 2, 2, 1, 1]


def test_groups_compare_in_float32_against_the_float32_threshold():
    """The threshold is float32(s/1000), a little above s/1000: a value between the two falls below it."""
    t = float(np.float32(0.123))  # 0.12300000339746475
    split = {"threshold": t, "mu1": 0.05, "mu2": 0.9}
    just_below = np.nextafter(np.float32(t), np.float32(0))  # the float32 just below the threshold
    assert assign_groups(np.array([just_below, np.float32(t)], dtype=np.float32), split).tolist() == [3, 2]


def test_first_detectable_epoch():
    # the rule needs two later epochs and six values in all
    assert [first_detectable_epoch(i) for i in (0, 2, 3, 12)] == [5, 5, 5, 14]
    for i in range(2, 12):
        values = [0.1] * 20
        values[i] = 0.5
        found_at = next(e for e in range(20) if detect_overfitting_epoch(values[: e + 1]) is not None)
        assert found_at == first_detectable_epoch(i)


def test_robust_targets_sharpened_and_normalised():
    y = torch.tensor([0, 2])
    ps = torch.tensor([[0.2, 0.5, 0.3], [0.1, 0.1, 0.8]])
    alpha = torch.tensor([0.5, 0.0])
    t = robust_targets(one_hot(y, 3), ps, alpha)
    raw = torch.tensor([0.5 + 0.1, 0.25, 0.15]) ** 1.5
    assert torch.allclose(t[0], raw / raw.sum())
    assert torch.allclose(t[1], torch.tensor([0.0, 0.0, 1.0]))  # alpha 0: the label itself
    assert torch.allclose(t.sum(1), torch.ones(2))


def test_robust_target_passes_gradient_to_student():
    zs = torch.randn(3, 4, requires_grad=True)
    zt = torch.randn(3, 4, requires_grad=True)
    t = robust_targets(one_hot(torch.tensor([0, 1, 2]), 4), zs.softmax(1), torch.full((3,), 0.7))
    teacher_loss(zt, t).backward()
    assert zs.grad is not None and zs.grad.abs().sum() > 0
    assert zt.grad.abs().sum() > 0


def test_teacher_loss_with_one_hot_target_is_cross_entropy():
    z = torch.randn(5, 4)
    y = torch.tensor([0, 1, 2, 3, 0])
    assert teacher_loss(z, one_hot(y, 4)).item() == pytest.approx(F.cross_entropy(z, y).item(), rel=1e-6)


def test_detached_robust_target_option_stops_student_gradient():
    """--detach_robust_target (not the original): the target no longer trains the student."""
    from bkd.config import TrainConfig
    from tests.synthetic import tiny_run

    grads = {}
    for detach in (False, True):
        # lr 0: no update, so the student's gradient of the last step is what the loss gave it
        t = tiny_run(TrainConfig(width=4, batch_size=8, lr=0.0, val_ratio=0, detach_robust_target=detach), n=8)
        t.sample_alpha = torch.full((8,), 0.7)
        t.train()
        grads[detach] = t.student.linear.weight.grad.clone()
    # the compensation loss still trains the student either way; the target adds gradient only when attached
    assert grads[True].abs().sum() > 0 and not torch.allclose(grads[False], grads[True])


def test_stop_flag_turns_signals_into_a_resumable_error():
    import signal

    from bkd.utils.errors import Interrupted
    from bkd.utils.stops import StopFlag

    flag = StopFlag()
    flag.defer("at the start of the run")  # (the loop's: from here a first signal is a flag)
    flag.check("anywhere")  # no signal yet: nothing happens
    flag._handler(signal.SIGINT, None)
    with pytest.raises(Interrupted, match="^SIGINT received during epoch 3$"):  # the run adds what its directory holds
        flag.check("epoch 3")
    with pytest.raises(KeyboardInterrupt):  # a second signal stops at once
        flag._handler(signal.SIGINT, None)


def test_before_the_run_starts_a_signal_stops_at_once_and_no_reader_takes_it_for_a_damaged_file():
    """Until the loop defers them (nothing to keep yet), a signal stops where the process is, saying what it was
    doing: a KeyboardInterrupt, which the readers' `except Exception` (a damaged file: one DataError line) let pass."""
    import signal

    from bkd.utils.stops import StopFlag, Stopped

    flag = StopFlag()
    flag.phase = "while loading the data"
    with pytest.raises(Stopped, match="^SIGTERM received while loading the data$"):
        try:
            flag._handler(signal.SIGTERM, None)
        except Exception:  # what every reader of the data catches
            pytest.fail("the stop was taken for an error of the data")
    assert issubclass(Stopped, KeyboardInterrupt)


def test_ranking_scores_against_hand_computed_values():
    from bkd.utils.metrics import ranking_scores

    truly_noisy = np.zeros(2000, bool)
    truly_noisy[:400] = True  # noise rate 0.2
    perfect = np.where(truly_noisy, 0.1, 0.9)  # every noisy label has the lower agreed probability
    s = ranking_scores(perfect, truly_noisy)
    assert s["auroc"] == 1.0 and s["average_precision"] == 1.0
    assert s["precision_at_100"] == 1.0 and s["precision_at_1000"] == 0.4  # 400 noisy among the first 1,000
    assert s["noise_rate"] == 0.2 and s["flag_all_f1"] == pytest.approx(2 * 0.2 / 1.2)
    inverted = ranking_scores(1 - perfect, truly_noisy)
    assert inverted["auroc"] == 0.0 and inverted["precision_at_100"] == 0.0
    # the floor is the F1 of flagging everything, by the original's arithmetic
    assert detection_scores(np.ones(2000, bool), truly_noisy)["f1"] == pytest.approx(s["flag_all_f1"])
    small = ranking_scores(perfect[:300], truly_noisy[:300])  # all noisy: no AUROC, no precision at 500
    assert small["auroc"] is None and small["precision_at_500"] is None and small["precision_at_100"] == 1.0
