"""Reference mode: the authors' computation, proven against their golden traces and logs.

* The training iteration is the original's computation bit for bit, on any CPU: checked here against a
  plain transcription of the authors' order of operations (docs/method.md).
* The tiny golden trace replays through the real command line (skips without ../shared/data).
"""

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bkd.outputs import Output
from tests.conftest import SHARED_DATA

GOLDEN = os.path.join(SHARED_DATA, "reference-traces")


def _spec_epoch(teacher, student, loader, optimizer, num_classes, groups=None, alphas=None):
    """One epoch written straight from the authors' order of operations (docs/method.md)."""
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


class _LossRecorder(Output):
    def __init__(self):
        self.losses = []

    def iteration(self, run, step):
        self.losses.append((step.loss.item(), step.naive.item(), step.comp.item()))


@pytest.mark.parametrize("robust", [False, True])
def test_engine_iteration_is_the_originals_computation_bit_for_bit(robust):
    """Run.train in the reference mode (PIL loader, fp32 NCHW, plain SGD) == a transcription of the authors' order
    of operations (docs/method.md), exactly."""
    from bkd.config import TrainConfig
    from bkd.method import group_alphas
    from tests.synthetic import tiny_run

    config = TrainConfig(width=4, batch_size=32, val_ratio=0, num_workers=0, reference=True)
    groups = np.random.RandomState(1).randint(1, 5, 70) if robust else None
    results = []
    for ours in (True, False):
        t = tiny_run(config, n=70, num_classes=10)
        alphas = group_alphas(groups, config.alphas, "cpu") if robust else None
        if ours:
            t.outputs, t.sample_alpha = (_LossRecorder(),), alphas
            out = t.train()
            mean_max, agree, losses = out.mean_top_student, out.label_prob["agreement"], t.outputs[0].losses
        else:
            t.nets.train()
            mean_max, agree, losses = _spec_epoch(
                t.teacher, t.student, t.loaders["train"].loader, t.optimizer, 10, groups, config.alphas
            )
        results.append(
            (
                mean_max,
                agree,
                losses,
                [p.detach().clone() for p in t.teacher.parameters()]
                + [p.detach().clone() for p in t.student.parameters()],
            )
        )
    (m1, a1, l1, w1), (m2, a2, l2, w2) = results
    assert m1 == m2
    assert torch.equal(a1, a2)
    assert l1 == l2 and len(l1) == 3
    assert all(torch.equal(x, y) for x, y in zip(w1, w2, strict=True))


TRACES = sorted(name for name in os.listdir(GOLDEN) if name.endswith(".json")) if os.path.isdir(GOLDEN) else []
SUITE_REPLAY_LIMIT_S = 300  # a trace whose recorded training took longer does not fit the suite's 10 minutes
DATA = [
    os.path.join(SHARED_DATA, "cifar10-jpeg", "cifar10.npz"),
    os.path.join(SHARED_DATA, "cifar-n", "CIFAR-10_human.pt"),
]


@pytest.mark.slow
@pytest.mark.skipif(
    not TRACES or not all(map(os.path.exists, DATA)),
    reason="needs ../shared/data (reference-traces/*.json, cifar10.npz, CIFAR-10_human.pt)",
)
@pytest.mark.parametrize("name", TRACES or ["none"])
def test_golden_trace_replays(name, tmp_path):
    """--reference through the real command line reproduces each golden trace of the authors' script and its logs.

    Every float is demanded where this CPU is of the recording machine's kind (vendor, family, model, torch's CPU
    capability: the trace's `config.machine`, else the Intel Xeon of reference-traces/README.md). On another kind,
    float rounding differs from the first backward pass on, so the data, the random streams and the schedule must
    still be equal in every iteration (the trace's overfitting epoch is given with --overfitting_epoch, because the
    rounding moves the confidence peak)."""
    from benchmarks.reference_check import replay, table
    from benchmarks.traces import compare, compare_logs

    path = os.path.join(GOLDEN, name)
    with open(path) as fh:
        recorded_s = json.load(fh)["run"]["wall_total_s"]
    if recorded_s > SUITE_REPLAY_LIMIT_S and not os.environ.get("BKD_LONG_REPLAYS"):
        pytest.skip(
            f"{name}: the authors' training took {recorded_s:.0f} s, beyond the suite's budget; BKD_LONG_REPLAYS=1 "
            f"runs it here, or python benchmarks/reference_check.py --trace {path}"
        )
    result = replay(path, str(tmp_path))
    ours, theirs, floats = result["ours"], result["theirs"], result["floats"]
    mine, recorded = result["cpu"]
    print(
        f"{name}: this CPU {mine}, the trace's {recorded}: "
        + ("every float demanded" if floats else "floats not demanded, data and schedule are")
    )
    first = next(compare(ours, theirs, floats=floats), None)
    assert first is None, "first difference at {}: {} ours {!r}, theirs {!r}".format(*first)
    assert len(ours["iterations"]) == len(theirs["iterations"]) > 0
    for log in ("training", "learning", "detection"):
        diff = compare_logs(result["logs"][log], result["golden_logs"][log], floats=floats)
        assert diff is None, f"{log} stdout, line {diff[0]}: ours {diff[1]!r}, theirs {diff[2]!r}"
    if floats:
        assert result["detection_sha256"] == theirs["detection_sha256"]
    demanded = [row for row in table(result) if row[3] == "DIFFERENT"]
    assert not demanded, demanded[0]


def test_compare_reports_the_first_difference_with_its_place():
    from benchmarks.traces import compare, compare_logs

    row = {
        "epoch": 0,
        "iter": 0,
        "batch": 2,
        "index_sha256": "a",
        "img_sha256": "b",
        "labels_sha256": "c",
        "target_sha256": "d",
        "loss": 1.0,
        "naive_loss": 0.5,
        "compensation_loss": 0.5,
    }
    theirs = {
        "config": {"subset_size": 4},
        "iterations": [row, dict(row, iter=1)],
        "epochs": [{"epoch": 0, "lr": 0.02, "mean_max_student_prob": 0.1}],
        "checkpoints": [],
    }
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


def test_same_numbers_compares_every_value_but_wall_clock_times():
    """benchmarks/same_numbers.py (a change of the code against an earlier commit): every value of two traces with ==,
    except wall-clock times and the names of files; a flag only one side records is listed, not failed."""
    from benchmarks.same_numbers import compare_runs

    trace = {
        "config": {"argv": ["--trace", "a.json"], "seed": 0, "args_as_parsed": {"lr": 0.02}},
        "iterations": [{"epoch": 0, "loss": 1.0}],
        "epochs": [{"epoch": 0, "wall_s": 3.0, "lr": 0.02}],
        "run": {"t_start": 1.0},
    }
    run = (trace, "epoch: 0\ttime elapsed: 0h 0m 3s\n", {"detection.npy": b"x"})
    other = json.loads(json.dumps(trace))
    other["epochs"][0]["wall_s"], other["run"]["t_start"], other["config"]["argv"] = 9.0, 2.0, ["--trace", "b.json"]
    other["config"]["args_as_parsed"]["strict_fp32"] = False  # a flag added since
    assert compare_runs(run, (other, "epoch: 0\ttime elapsed: 0h 0m 9s\n", {"detection.npy": b"x"})) == (
        [],
        [("config.args_as_parsed.strict_fp32", "(absent)", False)],
    )
    other["iterations"][0]["loss"] = 1.0000001
    diffs, _ = compare_runs(run, (other, run[1], {"detection.npy": b"y"}))
    assert diffs == [("iterations[0].loss", 1.0, 1.0000001), ("detection.npy", "bytes", "other bytes")]
