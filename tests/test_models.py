"""The network and its checkpoints."""

import pytest
import torch

from bkd.models import PreResNet18
from bkd.utils.checkpoint import load_model, model_checkpoint
from bkd.utils.errors import DataError
from bkd.utils.files import save_torch


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts_match_the_challenge_baseline():
    assert n_params(PreResNet18(10)) == 11_171_274
    assert n_params(PreResNet18(100)) == 11_217_444


def test_width_scales_channels_and_output_shape():
    model = PreResNet18(10, width=8)
    assert model.conv1.out_channels == 8 and model.linear.in_features == 64
    assert model(torch.zeros(3, 3, 32, 32)).shape == (3, 10)
    with pytest.raises(ValueError):
        PreResNet18(10, width=0)


def test_no_final_bn_relu_and_preactivated_shortcut():
    model = PreResNet18(10, width=8)
    names = [n for n, _ in model.named_children()]
    assert names == ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "linear"]
    block = model.layer2[0]
    assert isinstance(block.shortcut[0], torch.nn.Conv2d) and block.shortcut[0].kernel_size == (1, 1)
    assert len(model.layer1[0].shortcut) == 0


def test_checkpoint_round_trip_and_errors(tmp_path):
    model = PreResNet18(10, width=8)
    path = str(tmp_path / "teacher.pth.tar")
    save_torch(model_checkpoint(model, epoch=7, num_classes=10, width=8), path)
    loaded, ckpt = load_model(path, lambda c, w: PreResNet18(c, w))
    assert ckpt["epoch"] == 7 and set(ckpt) >= {"state_dict", "epoch"}
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True)
    )
    with pytest.raises(DataError, match="checkpoint not found"):
        load_model(str(tmp_path / "none.pth.tar"), lambda c, w: PreResNet18(c, w))
    truncated = tmp_path / "t.pth.tar"
    truncated.write_bytes(open(path, "rb").read()[:1000])
    with pytest.raises(DataError, match="unreadable checkpoint"):
        load_model(str(truncated), lambda c, w: PreResNet18(c, w))
    with pytest.raises(DataError, match="weights do not fit"):
        load_model(path, lambda c, w: PreResNet18(c, w * 2))


def test_channels_last_only_where_oneDNN_handles_it():
    """Narrow networks stay NCHW on the CPU: oneDNN's 1x1 channels-last backward fails below its vector block."""
    from bkd.engine import use_channels_last

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert [use_channels_last(True, cpu, w) for w in (4, 8, 16, 64)] == [False, False, True, True]
    assert use_channels_last(True, cuda, 4) and not use_channels_last(False, cpu, 64)
