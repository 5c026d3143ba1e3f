"""The three scripts through their command lines on a tiny synthetic dataset."""

import json
import os
import re

import numpy as np
import pytest
import torch

from tests.cli import run, tiny_flags

EVAL_FLAGS = ("data_root", "noise_path", "noise_type", "results_dir", "device", "no_download")


def eval_flags(flags):
    """The subset of training flags learning.py / detection.py take."""
    out, i = [], 0
    while i < len(flags):
        key = flags[i][2:]
        takes_value = i + 1 < len(flags) and not flags[i + 1].startswith("--")
        if key in EVAL_FLAGS:
            out += flags[i : i + (2 if takes_value else 1)]
        i += 2 if takes_value else 1
    return out


@pytest.fixture(scope="module")
def trained(synthetic_root, tmp_path_factory):
    results = str(tmp_path_factory.mktemp("results"))
    flags = tiny_flags(synthetic_root, results)
    train = run("blind_knowledge_dist_training.py", *flags, cwd=results)
    return flags, results, train.stdout


@pytest.mark.slow
def test_training_writes_every_output(trained):
    flags, results, stdout = trained
    run_dir = os.path.join(results, "cifar10_worst_seed_0")
    for name in (
        "teacher.pth.tar",
        "student.pth.tar",
        "teacher_last.pth.tar",
        "student_last.pth.tar",
        "detection.npy",
        "agreement.npy",
        "metrics.json",
        "state.pth.tar",
    ):
        assert os.path.exists(os.path.join(run_dir, name)), name
    detection = np.load(os.path.join(run_dir, "detection.npy"))
    assert detection.dtype == bool and detection.shape == (400,)
    metrics = json.load(open(os.path.join(run_dir, "metrics.json")))
    assert metrics["epochs_completed"] == 8 and len(metrics["mean_top_student"]) >= 6
    # every epoch's printed confidence is kept; the warm-up part is what the overfitting rule saw
    printed = [
        float(v) for v in re.findall(r"^\[bkd\] epoch \d+ .*student mean top probability ([\d.]+)", stdout, re.M)
    ]
    assert metrics["mean_top_student_all_epochs"] == pytest.approx(printed, abs=1e-4) and len(printed) == 8
    assert metrics["mean_top_student_all_epochs"][: len(metrics["mean_top_student"])] == metrics["mean_top_student"]
    assert metrics["detection"]["flagged"] == int(detection.sum())
    assert sum(metrics["group_sizes"]) == 360  # 400 images, 10 % validation
    best = torch.load(os.path.join(run_dir, "teacher.pth.tar"), weights_only=True)
    last = torch.load(os.path.join(run_dir, "teacher_last.pth.tar"), weights_only=True)
    assert best["epoch"] == metrics["best_epoch"] and last["epoch"] == 7  # 0-based, as the original
    # the original's lines, 0-based epochs, print_freq 5 of 12 iterations: 0, 5, 10 and the last (11)
    assert re.findall(
        r"^epoch:   0/  7\titer: +(\d+)/ 11\tloss: +[\d.]+\tnaive_loss: +[\d.]+\tcompensation_l2_loss: +[\d.]+$",
        stdout,
        re.M,
    ) == ["0", "5", "10", "11"]
    assert re.search(r"^epoch: 0\tacc on noisy val_data:  [\d.]+\tbest: [\d.]+ \(epoch: \d\)$", stdout, re.M)
    assert re.search(r"^epoch: 0\tacc on clean test_data: [\d.]+\tbest: [\d.]+ \(epoch: 0\)$", stdout, re.M)
    assert [e for e, _ in metrics["val_acc"]] == [0, 2, 4, 6, 7] and [e for e, _ in metrics["test_acc"]] == [0, 4, 7]
    # this run's student confidence rises in every epoch but one near-tie (0.138, 0.143, 0.143, 0.165, ..., 0.235), on
    # any CPU's rounding: no peak, so the last epoch's statistics are split (the run with a peak:
    # tests/test_reference.py)
    assert not re.search(r"^overfitting epoch: ", stdout, re.M) and metrics["overfit_epoch"] is None
    assert "[bkd] no overfitting epoch found in epochs 0..7; splitting the last epoch's statistics instead" in stdout
    assert metrics["split_fallback"] and metrics["split_epoch"] == 7
    tops = metrics["mean_top_student"]
    # rising from epoch 2 on: not a near miss of the rule
    assert all(b > a for a, b in zip(tops[2:], tops[3:], strict=False))
    assert "models saved - end of training" in stdout


# A parser's view of the original's standard output (the golden logs, docs/reference-mode.md).
ORIGINAL_LINES = [
    r"Current device is \S+",
    r"cpu|cuda(:\d+)?",
    r"Files already downloaded and verified",
    r"Loaded \w+ from .+\.",
    r"The overall noise rate is [\d.e-]+",
    r"noisy labels loaded from .+",
    r"The noisy data ratio in each class is \[[\d. ]+\]?",
    r" [\d. ]+\]?",
    r"over all noise rate is  [\d.e-]+",
    r"Train with \d+ noisy instances\.",
    r"Validate with \d+ noisy instances\.",
    r"building model\.\.\.",
    r"building model done",
    r"epoch \d+",
    r"epoch: +\d+/ *\d+\titer: +\d+/ *\d+\tloss: +[\d.]+\tnaive_loss: +[\d.]+\tcompensation_l2_loss: +[\d.]+",
    r"#{50}",
    r"overfitting epoch: \d+",
    r"otsu split performed:",
    r"\tup_mean: [\d.]+\tup_sigma: [\d.]+",
    r"\tlo_mean: [\d.]+\tlo_sigma: [\d.]+",
    r"\tthresh:  [\d.]+",
    r"models saved - new best val_acc!  \(prev best: [\d.]+ on epoch: \d+\)",
    r"epoch: \d+\tacc on noisy val_data:  [\d.]+\tbest: [\d.]+ \(epoch: \d+\)",
    r"epoch: \d+\tacc on clean test_data: [\d.]+\tbest: [\d.]+ \(epoch: \d+\)",
    r"models saved - end of training",
    r"epoch: \d+\ttime elapsed: \d+h \d+m \d+s",
]


def test_default_mode_log_has_only_the_originals_line_formats(trained):
    _, _, stdout = trained
    pattern = re.compile("|".join(f"(?:{p})" for p in ORIGINAL_LINES))
    strangers = [
        line for line in stdout.splitlines() if line and not line.startswith("[bkd] ") and not pattern.fullmatch(line)
    ]
    assert not strangers, strangers[:5]
    epochs = re.findall(r"^epoch (\d+)$", stdout, re.M)
    assert epochs == [str(e) for e in range(8)]  # 0-based
    assert stdout.splitlines()[:2] == ["Current device is cpu", "cpu"]


def test_training_learns_the_synthetic_classes(trained):
    _, results, _ = trained
    metrics = json.load(open(os.path.join(results, "cifar10_worst_seed_0", "metrics.json")))
    assert metrics["test_acc"][-1][1] > 40  # 10 classes: chance is 10 %


@pytest.mark.slow
def test_learning_reports_best_and_last(trained):
    flags, results, _ = trained
    out = run("learning.py", *eval_flags(flags), cwd=results).stdout
    best = float(re.search(r"^Best test acc selected by val is ([\d.]+)$", out, re.M).group(1))
    last = float(re.search(r"^\[bkd\] last epoch \(7\) test acc is ([\d.]+)$", out, re.M).group(1))
    metrics = json.load(open(os.path.join(results, "cifar10_worst_seed_0", "metrics.json")))
    assert metrics["learning"]["best_test_acc"] == best and metrics["learning"]["last_test_acc"] == last
    assert last == pytest.approx(metrics["test_acc"][-1][1])  # the training log's last-epoch test accuracy


@pytest.mark.slow
def test_detection_reports_scores(trained, synthetic_root):
    flags, results, _ = trained
    out = run("detection.py", *eval_flags(flags), cwd=results).stdout
    run_dir = os.path.join(results, "cifar10_worst_seed_0")
    flagged = np.load(os.path.join(run_dir, "detection.npy"))
    from bkd.data.labels import load_noisy_labels

    noisy, clean = load_noisy_labels("cifar10", "worst", os.path.join(synthetic_root, "CIFAR-10_human.pt"))
    truth = noisy != clean
    tp = int((flagged & truth).sum())
    precision, recall = tp / max(flagged.sum(), 1), tp / truth.sum()
    f1 = 2 * precision * recall / (precision + recall) if tp else 0.0
    # the original's five lines, in order, with full floats; then ours
    lines = [line for line in out.splitlines() if not line.startswith("[bkd] ")]
    assert lines[-5:] == [
        str(flagged.sum()),
        str(truth.sum()),
        f"precision is {precision}",
        f"recall is {recall}",
        f"The f-score is {f1}",
    ]
    assert lines[-7:-5] == ["Train with 400 noisy instances.", "Validate with 0 noisy instances."]
    # ours: the ranking behind label_issues.csv, scored, with the floor of flagging every label
    from bkd.utils.metrics import ranking_scores

    expected = ranking_scores(np.load(os.path.join(run_dir, "agreement.npy")), truth)
    saved = json.load(open(os.path.join(run_dir, "metrics.json")))["detection"]
    assert all(saved[k] == v for k, v in expected.items()) and saved["f1"] == f1
    assert f"[bkd] ranking by agreed probability: AUROC {expected['auroc']:.3f}" in out
    assert f"flagging every label scores F1 {2 * truth.mean() / (1 + truth.mean()):.3f} (the floor)" in out


def test_help_lists_original_flags_with_defaults():
    import blind_knowledge_dist_training
    import detection
    import learning

    train_help = " ".join(blind_knowledge_dist_training.build_parser().format_help().split())
    for flag, default in [
        ("--lr", "0.02"),
        ("--val_ratio", "0.1"),
        ("--n_epoch", "300"),
        ("--seed", "0"),
        ("--batch_size", "128"),
        ("--momentum", "0.9"),
        ("--weight_decay", "0.0005"),
        ("--clean_test_freq", "10"),
        ("--noisy_val_freq", "10"),
        ("--alpha1", "0.3"),
        ("--alpha2", "0.45"),
        ("--alpha3", "0.55"),
        ("--alpha4", "0.7"),
        ("--num_workers", "4"),
        ("--dataset", "cifar10"),
        ("--print_freq", "100"),
    ]:
        assert re.search(
            re.escape(flag) + r" [A-Z_0-9]+ (?:(?! --).)*?\(default: " + re.escape(default) + r"\)", train_help
        ), flag
    assert "--noise_path" in train_help and "--noise_type" in train_help
    for name, module in (("learning.py", learning), ("detection.py", detection)):
        text = module.build_parser().format_help()
        for flag in (
            "--lr",
            "--val_ratio",
            "--noise_type",
            "--noise_path",
            "--dataset",
            "--n_epoch",
            "--seed",
            "--print_freq",
            "--num_workers",
        ):
            assert flag in text, (name, flag)


def test_report_summary_and_plots(trained, synthetic_root, tmp_path):
    _, results, _ = trained
    run_dir = os.path.join(results, "cifar10_worst_seed_0")
    from bkd import report

    rows = report.summarise([run_dir])
    assert rows[0]["label set"] == "worst" and rows[0]["seeds"] == 1
    metrics = json.load(open(os.path.join(run_dir, "metrics.json")))
    assert rows[0]["F1"] == f"{metrics['detection']['f1']:.3f}"
    text = report.write_summary(rows, str(tmp_path / "summary"))
    assert "| cifar10 | worst | default | 1 |" in text and os.path.exists(tmp_path / "summary.csv")
    pytest.importorskip("matplotlib")
    from bkd.data.labels import load_noisy_labels

    noisy, clean = load_noisy_labels("cifar10", "worst", os.path.join(synthetic_root, "CIFAR-10_human.pt"))
    # The true-noise mask (not the detection), read back from the run's record of its label file; none where that file
    # is not at hand (its ImportError had been taken for such a case, so no plot was ever split)
    truth = report.truly_noisy(run_dir, metrics)
    assert truth is not None and np.array_equal(truth, noisy != clean) and 0 < truth.sum() < len(truth)
    moved = dict(metrics, config=dict(metrics["config"], noise_path=str(tmp_path / "moved.pt")))
    assert report.truly_noisy(run_dir, moved) is None
    paths = report.plot_run(run_dir, truly_noisy=truth)
    assert [os.path.basename(p) for p in paths] == ["confidence.png", "agreement.png", "accuracy.png"]
    assert all(os.path.getsize(p) > 1000 for p in paths)


@pytest.mark.parametrize("split_epoch", [0, 3])
def test_confidence_plot_marks_the_split_at_its_0_based_epoch(split_epoch):
    pytest.importorskip("matplotlib")
    from bkd import report

    m = {
        "mean_top_student": [0.1, 0.2, 0.3, 0.25, 0.2, 0.22],
        "mean_top_student_all_epochs": [0.1, 0.2, 0.3, 0.25, 0.2, 0.22, 0.5],
        "split_epoch": split_epoch,
        "split_fallback": False,
    }
    ax = report.confidence_figure(m, "run").axes[0]
    warmup, robust, marker = ax.lines
    assert list(warmup.get_xdata()) == [0, 1, 2, 3, 4, 5] and list(robust.get_xdata()) == [5, 6]
    assert list(marker.get_xdata()) == [split_epoch, split_epoch]


@pytest.mark.slow
def test_run_sh_runs_all_three_steps_and_fails_loudly(synthetic_root, tmp_path):
    import subprocess
    import sys

    from tests.cli import ROOT

    env = dict(
        os.environ,
        PYTHON=sys.executable,
        BKD_DATA_ROOT=synthetic_root,
        RESULTS_DIR=str(tmp_path),
        NOISE_TYPES="aggre",
        NOISE_PATH=os.path.join(synthetic_root, "CIFAR-10_human.pt"),
        DEVICE="cpu",
    )
    flags = ["--n_epoch", "2", "--width", "4", "--noisy_val_freq", "1", "--no_download"]
    proc = subprocess.run(
        ["bash", os.path.join(ROOT, "run.sh"), *flags], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    run_dir = tmp_path / "cifar10_aggre_seed_0"
    assert "Best test acc selected by val is" in (run_dir / "learning.log").read_text()
    assert "The f-score is" in (run_dir / "detection.log").read_text()
    assert "[bkd] finished" in (run_dir / "training.log").read_text()
    assert f"outputs in {run_dir}" in proc.stdout
    env.update(NOISE_TYPES="noisy100", DATASET="cifar10")  # a CIFAR-100 label set on CIFAR-10 images
    proc = subprocess.run(
        ["bash", os.path.join(ROOT, "run.sh"), *flags], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2
    assert "noisy100 belongs to cifar100" in proc.stderr and "run.sh: stopped with exit 2" in proc.stderr
    assert not os.path.exists(tmp_path / "cifar10_noisy100_seed_0")  # refused before anything was created


@pytest.mark.slow
def test_original_pipeline_reaches_the_same_accuracy(trained, synthetic_root, tmp_path):
    """--loader torchvision (PIL workers) and the default device pipeline: same method, same accuracy within noise."""
    flags, results, _ = trained
    run(
        "blind_knowledge_dist_training.py",
        *tiny_flags(synthetic_root, str(tmp_path), loader="torchvision", num_workers=2),
        cwd=str(tmp_path),
    )
    device_acc = json.load(open(os.path.join(results, "cifar10_worst_seed_0", "metrics.json")))["test_acc"][-1][1]
    pil = json.load(open(os.path.join(tmp_path, "cifar10_worst_seed_0", "metrics.json")))
    assert pil["config"]["loader"] == "torchvision"
    assert pil["test_acc"][-1][1] > 40 and abs(pil["test_acc"][-1][1] - device_acc) <= 15


@pytest.mark.slow
def test_cifar100_path(tmp_path):
    """CIFAR-100: 100 classes, zero padding, crop before flip, its own label keys."""
    from tests.synthetic import write_dataset

    root = str(tmp_path / "data100")
    _, label_path = write_dataset(root, dataset="cifar100", n_train=300, n_test=100)
    flags = tiny_flags(
        root,
        str(tmp_path),
        dataset="cifar100",
        noise_type="noisy100",
        noise_path=label_path,
        n_epoch=2,
        width=4,
        noisy_val_freq=1,
    )
    out = run("blind_knowledge_dist_training.py", *flags, cwd=str(tmp_path)).stdout
    assert "[bkd] no overfitting epoch found in epochs 0..1" in out
    run_dir = tmp_path / "cifar100_noisy100_seed_0"
    assert np.load(run_dir / "detection.npy").shape == (300,)
    assert torch.load(run_dir / "teacher.pth.tar", weights_only=True)["num_classes"] == 100
    common = ["--dataset", "cifar100", "--noise_type", "noisy100", "--results_dir", str(tmp_path), "--no_download"]
    assert (
        "Best test acc selected by val is"
        in run("learning.py", *common, "--data_root", root, "--noise_path", label_path, cwd=str(tmp_path)).stdout
    )
    assert "The f-score is" in run("detection.py", *common, "--noise_path", label_path, cwd=str(tmp_path)).stdout


def test_summary_is_mean_and_std_over_seeds(tmp_path):
    from bkd import report

    def write(seed, overfit, f1, best):
        d = tmp_path / f"cifar10_aggre_seed_{seed}_quick"
        d.mkdir()
        (d / "metrics.json").write_text(
            json.dumps(
                {
                    "config": {"dataset": "cifar10", "noise_type": "aggre", "preset": "quick"},
                    "overfit_epoch": overfit,
                    "detection": {"precision": 0.5, "recall": 0.5, "f1": f1},
                    "learning": {"best_test_acc": best, "last_test_acc": best},
                    "test_acc": [[40, best]],
                }
            )
        )
        return str(d)

    rows = report.summarise([write(0, 10, 0.2, 50.0), write(1, None, 0.4, 60.0)])
    assert len(rows) == 1 and rows[0]["seeds"] == 2
    assert rows[0]["F1"] == "0.300 ± 0.141"  # sample std of 0.2 and 0.4
    assert rows[0]["test acc, best val (%)"] == "55.00 ± 7.07"
    assert rows[0]["overfit epoch"] == "10 (1 of 2 runs)"  # a run without a peak is not averaged in silently


def test_the_run_summary_and_the_grid_summary_have_the_same_columns(tmp_path):
    """One set of columns (bkd.report.COLUMNS) for both summaries; they disagreed (the grid's had no overfitting
    epoch, the runs' no AUROC, AP, precision at k or floor)."""
    from bkd import report
    from launch import summary
    from launch.grid import Run

    metrics = {
        "config": {"dataset": "cifar10", "noise_type": "aggre"},
        "overfit_epoch": 7,
        "detection": {"precision": 0.5, "recall": 0.25, "f1": 1 / 3, "auroc": 0.75, "flag_all_f1": 0.2},
        "learning": {"best_test_acc": 50.0, "last_test_acc": 48.0},
        "epochs_completed": 2,
        "test_acc": [[1, 48.0]],
    }
    run_dir = tmp_path / "cifar10_aggre_seed_0"
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text(json.dumps(dict(metrics, config=dict(metrics["config"], n_epoch=2))))
    (run_dir / "learning.log").write_text("Best test acc selected by val is 50.0\n")
    (run_dir / "detection.log").write_text("The f-score is 0.33\n")
    by_run = report.summarise([str(run_dir)])[0]
    per_set, per_seed = summary.grid_summary([Run("cifar10", "aggre", 0, str(tmp_path))])
    columns = [name for name, _, _ in report.COLUMNS]
    assert (
        {k: by_run[k] for k in columns} == {k: per_set[0][k] for k in columns} == {k: per_seed[0][k] for k in columns}
    )
    assert by_run["overfit epoch"] == "7" and by_run["AUROC"] == "0.750" and by_run["AP"] == "n/a"


@pytest.mark.slow
def test_amp_on_the_cpu_needs_native_bf16(synthetic_root, tmp_path):
    """--amp: bf16 autocast on a CPU with native bf16 (the run completes and says so), else a one-line refusal."""
    from bkd.utils.devices import cpu_native_bf16

    proc = run(
        "blind_knowledge_dist_training.py",
        *tiny_flags(synthetic_root, str(tmp_path), n_epoch=2, amp=True),
        cwd=str(tmp_path),
        check=False,
    )
    if cpu_native_bf16():
        assert proc.returncode == 0, proc.stderr
        assert "[bkd] --amp: bf16 autocast on cpu" in proc.stdout and "[bkd] finished" in proc.stdout
    else:
        assert (
            proc.returncode == 2 and "has no native bf16" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
        )
        assert not os.path.exists(tmp_path / "cifar10_worst_seed_0" / "state.pth.tar")
