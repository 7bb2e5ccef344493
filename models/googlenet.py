"""GoogLeNet for CIFAR-10 (Inceptions a3, b3, a4-e4, a5, b5), the paper's key names.

Rates (10 entries): cr[0] unused (``pre_layers`` keeps 192); cr[k] for Inception k = 1..9 prunes the
3x3 conv of the 3x3 branch and both 3x3 convs of the "5x5" branch (1x1 -> 3x3 -> 3x3). In the last
Inception (b5) the branch outputs stay full and only the middle 5x5-branch conv is pruned.
"""
from __future__ import annotations

import torch
from torch import nn

from models.compress import kept_width
from models.layout import ChannelLayout, LayoutBuilder
from models.registry import register_model

# (n1x1, n3x3, n5x5, pool) and (n3x3red, n5x5red) per Inception
FILTERS = [[64, 128, 32, 32], [128, 192, 96, 64], [192, 208, 48, 64], [160, 224, 64, 64], [128, 256, 64, 64],
           [112, 288, 64, 64], [256, 320, 128, 128], [256, 320, 128, 128], [384, 384, 128, 128]]
MID_FILTERS = [[96, 16], [128, 32], [96, 16], [112, 24], [128, 24], [144, 32], [160, 32], [160, 32], [192, 48]]
NAMES = ["inception_a3", "inception_b3", "inception_a4", "inception_b4", "inception_c4", "inception_d4",
         "inception_e4", "inception_a5", "inception_b5"]


def _conv_bn_relu(in_c: int, out_c: int, kernel: int) -> list[nn.Module]:
    return [nn.Conv2d(in_c, out_c, kernel, padding=kernel // 2), nn.BatchNorm2d(out_c), nn.ReLU(True)]


class Inception(nn.Module):
    def __init__(self, in_planes: int, n1x1: int, n3x3red: int, n3x3: int, n5x5red: int, n5x5: int,
                 pool_planes: int, rate: float, last: bool = False) -> None:
        super().__init__()
        out3 = n3x3 if last else kept_width(n3x3, rate)
        mid5 = kept_width(n5x5, rate)
        out5 = n5x5 if last else mid5
        self.branch1x1 = nn.Sequential(*_conv_bn_relu(in_planes, n1x1, 1))
        self.branch3x3 = nn.Sequential(*_conv_bn_relu(in_planes, n3x3red, 1), *_conv_bn_relu(n3x3red, out3, 3))
        self.branch5x5 = nn.Sequential(*_conv_bn_relu(in_planes, n5x5red, 1), *_conv_bn_relu(n5x5red, mid5, 3),
                                       *_conv_bn_relu(mid5, out5, 3))
        self.branch_pool = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), *_conv_bn_relu(in_planes, pool_planes, 1))

    @property
    def out_channels(self) -> int:
        return sum(branch[-2].num_features for branch in (self.branch1x1, self.branch3x3, self.branch5x5,
                                                          self.branch_pool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1x1(x), self.branch3x3(x), self.branch5x5(x), self.branch_pool(x)], 1)


class GoogLeNet(nn.Module):
    def __init__(self, rates: list[float], num_classes: int = 10) -> None:
        super().__init__()
        self.pre_layers = nn.Sequential(*_conv_bn_relu(3, 192, 3))
        in_planes = 192
        for k, name in enumerate(NAMES):
            (n1, n3, n5, pool), (r3, r5) = FILTERS[k], MID_FILTERS[k]
            block = Inception(in_planes, n1, r3, n3, r5, n5, pool, rates[k + 1], last=k == len(NAMES) - 1)
            setattr(self, name, block)
            in_planes = block.out_channels
            if name == "inception_b3":
                self.maxpool1 = nn.MaxPool2d(3, stride=2, padding=1)
            if name == "inception_e4":
                self.maxpool2 = nn.MaxPool2d(3, stride=2, padding=1)
        self.avgpool = nn.AvgPool2d(8, stride=1)
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pre_layers(x)
        out = self.maxpool1(self.inception_b3(self.inception_a3(out)))
        for name in NAMES[2:7]:
            out = getattr(self, name)(out)
        out = self.inception_b5(self.inception_a5(self.maxpool2(out)))
        return self.linear(torch.flatten(self.avgpool(out), 1))


def googlenet_layout(model: GoogLeNet) -> ChannelLayout:
    """A group per conv; each Inception reads the concatenation of the previous one's four branch outputs."""
    b = LayoutBuilder()
    concat = [b.group("pre_layers", ["pre_layers.0", "pre_layers.1"])]
    for k, name in enumerate(NAMES):
        last = k == len(NAMES) - 1
        for entry in ("branch1x1.0", "branch3x3.0", "branch5x5.0", "branch_pool.1"):
            b.feed(f"{name}.{entry}", *concat)
        b1 = b.group(f"{name}.branch1x1", [f"{name}.branch1x1.0", f"{name}.branch1x1.1"])
        b3_red = b.group(f"{name}.branch3x3.red", [f"{name}.branch3x3.0", f"{name}.branch3x3.1"])
        b3 = b.group(f"{name}.branch3x3", [f"{name}.branch3x3.3", f"{name}.branch3x3.4"],
                     rate_index=None if last else k + 1)
        b5_red = b.group(f"{name}.branch5x5.red", [f"{name}.branch5x5.0", f"{name}.branch5x5.1"])
        b5_mid = b.group(f"{name}.branch5x5.mid", [f"{name}.branch5x5.3", f"{name}.branch5x5.4"], rate_index=k + 1)
        b5 = b.group(f"{name}.branch5x5", [f"{name}.branch5x5.6", f"{name}.branch5x5.7"],
                     rate_index=None if last else k + 1)
        pool = b.group(f"{name}.branch_pool", [f"{name}.branch_pool.1", f"{name}.branch_pool.2"])
        b.feed(f"{name}.branch3x3.3", b3_red)
        b.feed(f"{name}.branch5x5.3", b5_red)
        b.feed(f"{name}.branch5x5.6", b5_mid)
        concat = [b1, b3, b5, pool]
    b.feed("linear", *concat)
    return b.build()


@register_model("googlenet", layout=googlenet_layout, num_rates=10, num_classes=10, input_size=32, dataset="cifar10")
def googlenet(rates: list[float], num_classes: int) -> GoogLeNet:
    return GoogLeNet(rates, num_classes)
