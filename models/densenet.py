"""DenseNet-40 (growth 12, BN-ReLU-conv) for CIFAR-10, the paper's key names.

Rates (39 entries): cr[0] unused (the stem keeps 24), cr[1..12] the dense-1 layers, cr[13] transition 1,
cr[14..25] dense 2, cr[26] transition 2, cr[27..38] dense 3.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.compress import kept_width
from models.init import he_normal_init
from models.layout import ChannelLayout, LayoutBuilder
from models.registry import register_model

GROWTH, LAYERS_PER_BLOCK = 12, 12


class DenseLayer(nn.Module):
    def __init__(self, inplanes: int, outplanes: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(inplanes, outplanes, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((x, self.conv1(self.relu(self.bn1(x)))), 1)


class Transition(nn.Module):
    def __init__(self, inplanes: int, outplanes: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(inplanes, outplanes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv1(self.relu(self.bn1(x))), 2)


class DenseNet(nn.Module):
    def __init__(self, rates: list[float], num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 2 * GROWTH, 3, padding=1, bias=False)
        channels = 2 * GROWTH
        for block in (1, 2, 3):
            first = (block - 1) * (LAYERS_PER_BLOCK + 1) + 1
            layers = []
            for i in range(LAYERS_PER_BLOCK):
                out = kept_width(GROWTH, rates[first + i])
                layers.append(DenseLayer(channels, out))
                channels += out
            setattr(self, f"dense{block}", nn.Sequential(*layers))
            if block < 3:
                out = kept_width(channels, rates[first + LAYERS_PER_BLOCK])
                setattr(self, f"trans{block}", Transition(channels, out))
                channels = out
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(channels, num_classes)
        he_normal_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dense1(self.conv1(x))
        x = self.dense2(self.trans1(x))
        x = self.dense3(self.trans2(x))
        x = self.avgpool(self.relu(self.bn(x)))
        return self.fc(torch.flatten(x, 1))


def densenet_layout(model: DenseNet) -> ChannelLayout:
    """Each conv is a group; every later layer of the block reads the concatenation of the groups so far."""
    b = LayoutBuilder()
    concat = [b.group("conv1", ["conv1"])]
    for block in (1, 2, 3):
        first = (block - 1) * (LAYERS_PER_BLOCK + 1) + 1
        for i in range(LAYERS_PER_BLOCK):
            name = f"dense{block}.{i}"
            b.feed(f"{name}.bn1", *concat)
            b.feed(f"{name}.conv1", *concat)
            concat.append(b.group(name, [f"{name}.conv1"], rate_index=first + i))
        if block < 3:
            name = f"trans{block}"
            b.feed(f"{name}.bn1", *concat)
            b.feed(f"{name}.conv1", *concat)
            concat = [b.group(name, [f"{name}.conv1"], rate_index=first + LAYERS_PER_BLOCK)]
    b.feed("bn", *concat)
    b.feed("fc", *concat)
    return b.build()


@register_model("densenet_40", layout=densenet_layout, num_rates=39, num_classes=10, input_size=32,
                dataset="cifar10")
def densenet_40(rates: list[float], num_classes: int) -> DenseNet:
    return DenseNet(rates, num_classes)
