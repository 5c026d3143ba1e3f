"""PreResNet18 of the CIFAR-N challenge baseline (docs/method.md, 'The networks and the optimiser').

Stem conv3x3 -> BN -> ReLU, four stages of two pre-activation basic blocks, 4x4 average pooling (at other image
sizes: over the whole last map, by the same operation) and a linear head. Unlike He et al.'s PreAct-ResNet there is
no BN-ReLU after the last stage, and the 1x1 projection shortcut is applied to the block's pre-activated input.
"""

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class PreActBlock(nn.Module):
    """BN -> ReLU -> conv3x3 -> BN -> ReLU -> conv3x3, plus shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class ResNet(nn.Module):
    """The original's ResNet of pre-activation blocks, `width` channels in its first stage (64 there)."""

    def __init__(self, num_blocks: Sequence[int] = (2, 2, 2, 2), num_classes: int = 10, width: int = 64) -> None:
        super().__init__()
        self.in_planes = width
        self.conv1 = conv3x3(3, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = self._make_layer(width, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(2 * width, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(4 * width, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(8 * width, num_blocks[3], stride=2)
        self.linear = nn.Linear(8 * width, num_classes)

    def _make_layer(self, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        blocks = []
        for block_stride in [stride] + [1] * (num_blocks - 1):
            blocks.append(PreActBlock(self.in_planes, planes, block_stride))
            self.in_planes = planes
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        # the original's 4x4 average pool at 32x32 inputs; at any other size the same pool over the whole map (not
        # adaptive_avg_pool2d, whose CUDA backward has no deterministic implementation)
        out = F.avg_pool2d(out, tuple(out.shape[-2:]))
        return self.linear(out.flatten(1))


def PreResNet18(num_classes: int = 10, width: int = 64) -> ResNet:
    """The challenge's PreResNet18; `width` scales the channels (64 = the original)."""
    if width < 1:
        raise ValueError(f"width must be a positive integer, got {width}")
    return ResNet((2, 2, 2, 2), num_classes=num_classes, width=width)
