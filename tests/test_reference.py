"""Reference mode: the authors' computation, proven against their golden traces and logs.

* The engine's iteration is the original's computation (spec section 7) bit for bit, on any CPU:
  checked here against a plain transcription of the spec's order of operations.
* The tiny golden trace replays through the real command line (skips without ../shared/data).
"""
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import SHARED_DATA

GOLDEN = os.path.join(SHARED_DATA, "reference-traces")


def _spec_epoch(teacher, student, loader, optimizer, num_classes, groups=None, alphas=None):
    """One epoch written straight from spec section 7 (the authors' order of operations)."""
    n = len(loader.dataset)
    agree_container = torch.zeros(n)
    mean_max, count, losses = 0, 0, []
    for img, target, index in loader:
        z_t = teacher(img)
        z_s = student(img)
        onehot = F.one_hot(target, num_classes).float()
        error = z_t - z_s
        error *= 1 - onehot
        compensation = error.pow(2).sum() / (target.shape[0] * num_classes - 1)
        p_s = z_s.softmax(dim=1)
        p_t = z_t.softmax(dim=1)
        p_a = p_t * p_s
        p_a = p_a / p_a.sum(dim=1, keepdims=True)
        agree_container[index] = p_a[torch.arange(target.numel()), target].detach().clone()
        top = p_s.max(dim=1)[0].detach()
        mean_max += top.sum()
        count += top.numel()
        if groups is not None:
            balance = torch.ones_like(target).float()
            for k in range(4):
                balance[torch.as_tensor(groups == k + 1)[index]] = alphas[k]
            robust = (1 - balance[:, None]) * onehot + balance[:, None] * p_s
            robust = robust.pow(1 + balance[:, None])
            goal = robust / robust.sum(dim=1, keepdims=True)
        else:
            goal = onehot
        naive = F.cross_entropy(z_t, goal, reduction="none").mean()
        loss = naive + compensation
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append((loss.item(), naive.item(), compensation.item()))
    return (mean_max / count).item(), agree_container, losses


class _LossRecorder:
    def __init__(self):
        self.losses = []

    def iteration(self, epoch, i, idx, x, y, target, loss, naive, comp):
        self.losses.append((loss.item(), naive.item(), comp.item()))


@pytest.mark.parametrize("robust", [False, True])
def test_engine_iteration_is_the_originals_computation_bit_for_bit(robust):
    """train_epoch (reference settings: PIL loader, fp32 NCHW, plain SGD) == the spec's transcription, exactly."""
    from bkd.engine import Precision, group_alphas, train_epoch
    from bkd.data.loaders import TorchvisionLoader
    from bkd.models import PreResNet18

    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, (70, 32, 32, 3), dtype=np.uint8)
    labels = rng.randint(0, 10, 70)
    groups = rng.randint(1, 5, 70) if robust else None
    alphas = (0.30, 0.45, 0.55, 0.70)
    results = []
    for ours in (True, False):
        torch.manual_seed(0)
        teacher, student = PreResNet18(10, 4), PreResNet18(10, 4)
        optimizer = torch.optim.SGD(list(teacher.parameters()) + list(student.parameters()), lr=0.02, momentum=0.9,
                                    weight_decay=5e-4)
        loader = TorchvisionLoader(images, labels, batch_size=32, device="cpu", mean=(0.49, 0.48, 0.45),
                                   std=(0.2, 0.2, 0.2), shuffle=True, augment={"pad_mode": "reflect", "flip_first": True},
                                   num_workers=0)
        teacher.train(), student.train()
        if ours:
            recorder = _LossRecorder()
            out = train_epoch(teacher, student, loader, optimizer, Precision(torch.device("cpu")), epoch=0, n_epoch=1,
                              num_classes=10, log=lambda *a: None, on_iteration=recorder.iteration,
                              sample_alpha=group_alphas(groups, alphas, "cpu") if robust else None)
            mean_max, agree, losses = out["mean_top_student"], out["label_prob"]["agreement"], recorder.losses
        else:
            mean_max, agree, losses = _spec_epoch(teacher, student, loader.loader, optimizer, 10, groups, alphas)
        results.append((mean_max, agree, losses, [p.detach().clone() for p in teacher.parameters()] +
                        [p.detach().clone() for p in student.parameters()]))
    (m1, a1, l1, w1), (m2, a2, l2, w2) = results
    assert m1 == m2
    assert torch.equal(a1, a2)
    assert l1 == l2 and len(l1) == 3
    assert all(torch.equal(x, y) for x, y in zip(w1, w2))


def _golden_available():
    return all(os.path.exists(p) for p in (os.path.join(GOLDEN, "tiny.json"), os.path.join(SHARED_DATA, "cifar10-jpeg", "cifar10.npz"),
                                           os.path.join(SHARED_DATA, "cifar-n", "CIFAR-10_human.pt")))


@pytest.mark.skipif(not _golden_available(), reason="needs ../shared/data (golden traces, cifar10.npz, CIFAR-10_human.pt)")
def test_tiny_golden_trace_replays(tmp_path):
    """--reference through the real command line reproduces the authors' tiny trace and logs.

    On a CPU of another kind than the recording machine's (vendor, family, model, torch's CPU capability), float rounding
    differs from the first backward pass on, so the floats cannot be demanded; the data, the random streams
    and the schedule still must be equal in every iteration (the trace's overfitting epoch is given with
    --overfitting_epoch, because the rounding moves the confidence peak)."""
    from benchmarks.reference_check import replay, table
    from benchmarks.traces import compare, compare_logs

    result = replay(os.path.join(GOLDEN, "tiny.json"), str(tmp_path))
    ours, theirs, floats = result["ours"], result["theirs"], result["floats"]
    if not floats:
        mine, recorded = result["cpu"]
        print(f"this CPU {mine}, the trace's {recorded}: floats not demanded, data and schedule are")
    first = next(compare(ours, theirs, floats=floats), None)
    assert first is None, "first difference at {}: {} ours {!r}, theirs {!r}".format(*first)
    assert len(ours["iterations"]) == len(theirs["iterations"]) == 80
    for name in ("training", "learning", "detection"):
        diff = compare_logs(result["logs"][name], result["golden_logs"][name], floats=floats)
        assert diff is None, f"{name} stdout, line {diff[0]}: ours {diff[1]!r}, theirs {diff[2]!r}"
    if floats:
        assert result["detection_sha256"] == theirs["detection_sha256"]
    demanded = [row for row in table(result) if row[3] == "DIFFERENT"]
    assert not demanded, demanded[0]


def test_compare_reports_the_first_difference_with_its_place():
    from benchmarks.traces import compare, compare_logs

    row = {"epoch": 0, "iter": 0, "batch": 2, "index_sha256": "a", "img_sha256": "b", "labels_sha256": "c",
           "target_sha256": "d", "loss": 1.0, "naive_loss": 0.5, "compensation_loss": 0.5}
    theirs = {"config": {"subset_size": 4}, "iterations": [row, dict(row, iter=1)],
              "epochs": [{"epoch": 0, "lr": 0.02, "mean_max_student_prob": 0.1}], "checkpoints": []}
    ours = json.loads(json.dumps(theirs))
    assert next(compare(ours, theirs), None) is None
    ours["iterations"][1]["loss"] = 1.0000001
    assert next(compare(ours, theirs)) == ("iterations[epoch 0, iter 1]", "loss", 1.0000001, 1.0)
    assert next(compare(ours, theirs, floats=False), None) is None  # a float: not demanded across CPU types
    ours["iterations"][1]["img_sha256"] = "x"
    assert next(compare(ours, theirs, floats=False)) == ("iterations[epoch 0, iter 1]", "img_sha256", "x", "b")
    log = "Current device is cpu\nbuilding model done\nepoch 0\nepoch: 0\ttime elapsed: 0h 0m 3s\n"
    assert compare_logs(log.replace("3s", "9s") + "[bkd] ours\n", log) is None
    assert compare_logs(log.replace("epoch 0", "epoch 1"), log) == (3, "epoch 1", "epoch 0")
    assert compare_logs(log.replace("epoch 0", "epoch 1"), log, floats=False) is None  # numbers masked
