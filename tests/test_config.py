"""Each decision made once: the training defaults, the computation of a run, the resume rules, the run's images; and
the Python API behaving like a library (the caller's random state and signal handlers left as they were)."""

import random
import signal
from dataclasses import fields

import numpy as np
import pytest
import torch

from bkd.config import DEFAULTS, TrainConfig
from tests.cli import run
from tests.synthetic import flip_labels, make_images

FLAGS = dict(n_epoch=6, width=4, batch_size=32, lr_step=4, noisy_val_freq=3, clean_test_freq=3, eval_batch_size=64)


def test_the_training_parser_takes_every_default_from_train_config():
    import blind_knowledge_dist_training as training
    import detection
    import learning
    from flags import EVAL_PRINT_FREQ, PRESETS, parse

    parser = training.build_parser()
    args = vars(parse(parser, []))
    for f in fields(TrainConfig):
        assert f"--{f.name}" in parser.option_names, f"--{f.name} is a training value without a flag"
        assert args[f.name] == getattr(DEFAULTS, f.name), f.name
        assert f.metadata["help"], f"--{f.name} has no help text"
    quick = vars(parse(parser, ["--preset", "quick", "--width", "8"]))  # a preset's values, an explicit flag first
    assert quick["width"] == 8 and quick["n_epoch"] == PRESETS["quick"]["n_epoch"] and quick["lr"] == DEFAULTS.lr
    for module in (learning, detection):  # the original's flags, with the original's defaults (print_freq 50 there)
        shared = vars(parse(module.build_parser(), []))
        for name in ("lr", "val_ratio", "n_epoch", "seed", "num_workers"):
            assert shared[name] == getattr(DEFAULTS, name), (module.__name__, name)
        assert shared["print_freq"] == EVAL_PRINT_FREQ == 50
        assert "width" not in shared  # a training flag: not the evaluations'


def test_a_new_hyper_parameter_is_one_field_with_its_flag_help_and_check(monkeypatch):
    """A field added to TrainConfig is a training flag with its help text, checked by its check, and the API's."""
    import dataclasses

    import flags
    from bkd import config
    from bkd.utils.errors import UsageError

    extended = dataclasses.make_dataclass(
        "TrainConfig", [("gamma", float, config.option(0.5, "new factor", config.share))], bases=(TrainConfig,)
    )
    monkeypatch.setattr(flags, "TrainConfig", extended)
    monkeypatch.setattr(config, "TrainConfig", extended)
    parser = flags.training_parser()
    assert flags.parse(parser, []).gamma == 0.5 and flags.parse(parser, ["--gamma", "0.25"]).gamma == 0.25
    assert "new factor (default: 0.5)" in " ".join(parser.format_help().split())
    with pytest.raises(UsageError, match=r"^--gamma 2.0 must be in \[0, 1\]$"):
        flags.parse(parser, ["--gamma", "2"])
    with pytest.raises(UsageError, match=r"^--gamma 2 must be in \[0, 1\]$"):
        config.check_config(extended(gamma=2))


@pytest.fixture(scope="module")
def labelled():
    rng = np.random.RandomState(0)
    images, clean = make_images(160, 4, rng)
    return images, flip_labels(clean, 0.2, 4, rng)


@pytest.fixture()
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the command line in the tests (tests/conftest.py)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_the_api_in_reference_mode_writes_the_checkpoints_the_command_line_writes(labelled, tmp_path, one_thread):
    """The original's end save overwrites the best checkpoint: the API once passed its own `False` and kept epoch 3."""
    from bkd import find_label_issues

    images, given = labelled
    flags = dict(FLAGS, noisy_val_freq=1)  # validation in every epoch: the best by validation is epoch 3 here
    path = str(tmp_path / "mine.npz")
    np.savez(path, x_train=images, y_train=given)
    run(
        "blind_knowledge_dist_training.py",
        "--dataset",
        "custom",
        "--data_file",
        path,
        "--results_dir",
        tmp_path,
        "--device",
        "cpu",
        "--reference",
        "--num_workers",
        "0",
        *[f"--{k}={v}" for k, v in flags.items()],
        cwd=str(tmp_path),
    )
    find_label_issues(
        images, given, device="cpu", reference=True, num_workers=0, run_dir=str(tmp_path / "api"), **flags
    )
    for name in ("teacher.pth.tar", "student.pth.tar", "teacher_last.pth.tar"):
        cli, api = (torch.load(tmp_path / d / name, weights_only=True) for d in ("custom_mine_seed_0", "api"))
        assert cli["epoch"] == api["epoch"] == 5, name  # the last epoch, as the original
        assert all(torch.equal(cli["state_dict"][k], api["state_dict"][k]) for k in cli["state_dict"]), name


@pytest.mark.slow
def test_the_api_leaves_the_callers_random_state_and_signal_handlers_and_is_deterministic(labelled, one_thread):
    from bkd import find_label_issues

    images, given = labelled
    random.seed(123)
    np.random.seed(456)
    torch.manual_seed(789)
    before = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    first = find_label_issues(images, given, device="cpu", **FLAGS)
    after = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    assert after[0] == before[0] and all(np.array_equal(a, b) for a, b in zip(after[1], before[1], strict=True))
    assert torch.equal(after[2], before[2])
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers
    random.random(), np.random.rand(), torch.rand(3)  # the caller draws on: the next call is still the same run
    second = find_label_issues(images, given, device="cpu", **FLAGS)
    assert np.array_equal(first.ranked, second.ranked) and np.array_equal(first.pred_probs, second.pred_probs)


def test_a_runs_images_and_labels_are_taken_once():
    from bkd.data.custom import from_arrays
    from bkd.data.datasets import CUSTOM, DataSelection, input_dataset

    images, labels = make_images(40, 4, np.random.RandomState(0))
    data = input_dataset(
        DataSelection(dataset=CUSTOM, arrays=from_arrays(images, labels)), TrainConfig(subset=20, val_ratio=0.1)
    )
    assert data.images is data.images and data.labels is data.labels  # attributes, not a copy per access
    assert np.array_equal(data.images, images[data.subset]) and np.array_equal(data.labels, labels[data.subset])


def test_the_api_refuses_other_data_in_its_run_directory_with_api_advice(labelled, tmp_path, one_thread):
    from bkd import find_label_issues
    from bkd.utils.errors import DataError

    images, given = labelled
    find_label_issues(images, given, device="cpu", run_dir=str(tmp_path / "run"), **dict(FLAGS, n_epoch=1))
    other = given.copy()
    other[:3] = (other[:3] + 1) % 4
    with pytest.raises(DataError) as err:
        find_label_issues(images, other, device="cpu", run_dir=str(tmp_path / "run"), **dict(FLAGS, n_epoch=1))
    assert "the training labels" in str(err.value) and str(err.value).endswith("or give another run_dir")
    assert "--overwrite" not in str(err.value)


def test_the_api_resumes_with_another_print_freq_as_the_command_line_does(labelled, tmp_path, one_thread):
    """One resume rule: the API compared its whole argument dict and refused what the command line allows."""
    from bkd import find_label_issues

    images, given = labelled
    flags = dict(FLAGS, n_epoch=1)
    first = find_label_issues(images, given, device="cpu", run_dir=str(tmp_path / "run"), **flags)
    again = find_label_issues(images, given, device="cpu", run_dir=str(tmp_path / "run"), **dict(flags, print_freq=7))
    assert np.array_equal(first.ranked, again.ranked)
