"""ResNet-56 / ResNet-110 for CIFAR-10 (basic blocks, option-A shortcuts), the paper's key names.

Rates (3 + blocks entries): cr[0] the stem, cr[1] / cr[2] the outputs of every block of stages 1 / 2
(stage 3 keeps 64), cr[3:] the middle width of each block.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.compress import kept_width
from models.layout import ChannelLayout, LayoutBuilder
from models.registry import register_model

STAGE_WIDTHS = (16, 32, 64)


class ChannelPadShortcut(nn.Module):
    """Parameter-free option-A shortcut: subsample spatially if strided, zero-pad (or crop) channels.

    Channels pass by *position*: ``(out - in) // 2`` channels in front and the rest behind; a
    negative pad crops, as in the paper's code when a block's output is narrower than its input.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.front = (out_channels - in_channels) // 2
        self.back = out_channels - in_channels - self.front

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, self.front, self.back))


class BasicBlock(nn.Module):
    def __init__(self, mid: int, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, mid, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(mid, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = (ChannelPadShortcut(inplanes, planes, stride)
                                    if stride != 1 or inplanes != planes else nn.Sequential())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, blocks_per_stage: int, rates: list[float], num_classes: int, classifier_name: str) -> None:
        super().__init__()
        n = blocks_per_stage
        stage_rates = [rates[1], rates[2], 0.0]
        self.conv1 = nn.Conv2d(3, kept_width(16, rates[0]), 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.conv1.out_channels)
        self.relu = nn.ReLU(inplace=True)
        inplanes, block_index = self.conv1.out_channels, 0
        for stage, (width, rate) in enumerate(zip(STAGE_WIDTHS, stage_rates), start=1):
            blocks = []
            for b in range(n):
                stride = 2 if stage > 1 and b == 0 else 1
                planes = kept_width(width, rate)
                mid = kept_width(width, rates[3 + block_index])
                blocks.append(BasicBlock(mid, inplanes, planes, stride))
                inplanes, block_index = planes, block_index + 1
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier_name = classifier_name
        setattr(self, classifier_name, nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(self.avgpool(x), 1)
        return getattr(self, self.classifier_name)(x)


def cifar_resnet_layout(model: CifarResNet) -> ChannelLayout:
    """Stem, one output group per stage (every block's conv2, via identity shortcuts), one group per block middle."""
    b = LayoutBuilder()
    stem = b.group("stem", ["conv1", "bn1"], rate_index=0)
    block_index, previous = 0, stem
    for stage in (1, 2, 3):
        blocks = getattr(model, f"layer{stage}")
        names = [f"layer{stage}.{i}" for i in range(len(blocks))]
        out = b.group(f"layer{stage}.out", [m for n in names for m in (f"{n}.conv2", f"{n}.bn2")],
                      scored=[f"{n}.conv2" for n in names], rate_index=stage if stage < 3 else None)
        for i, name in enumerate(names):
            mid = b.group(f"{name}.mid", [f"{name}.conv1", f"{name}.bn1"], rate_index=3 + block_index)
            b.feed(f"{name}.conv1", previous if i == 0 else out)
            b.feed(f"{name}.conv2", mid)
            block_index += 1
        previous = out
    b.feed(model.classifier_name, previous)
    b.tie(stem, "layer1.out")  # identity shortcut of layer1.0 when both keep the same width
    return b.build()


@register_model("resnet_56", layout=cifar_resnet_layout, num_rates=30, num_classes=10, input_size=32,
                dataset="cifar10")
def resnet_56(rates: list[float], num_classes: int) -> CifarResNet:
    return CifarResNet(9, rates, num_classes, classifier_name="fc")


@register_model("resnet_110", layout=cifar_resnet_layout, num_rates=57, num_classes=10, input_size=32,
                dataset="cifar10")
def resnet_110(rates: list[float], num_classes: int) -> CifarResNet:
    return CifarResNet(18, rates, num_classes, classifier_name="linear")
