"""ResNet-50 for ImageNet in torchvision's layout and key names, slimmed by the paper's 20 rates.

cr[0] the stem, cr[1..3] the outputs of stages 1-3 (every conv3 and the downsample conv; stage 4
keeps 2048), cr[4..19] the middle width (conv1 and conv2) of each of the 16 bottlenecks.
"""
from __future__ import annotations

import torch
from torch import nn

from models.compress import kept_width
from models.layout import ChannelLayout, LayoutBuilder
from models.registry import register_model

STAGE_BLOCKS = (3, 4, 6, 3)
STAGE_WIDTHS = (256, 512, 1024, 2048)


class Bottleneck(nn.Module):
    def __init__(self, mid: int, inplanes: int, planes: int, stride: int = 1, downsample: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False),
                                         nn.BatchNorm2d(planes)) if downsample else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50(nn.Module):
    def __init__(self, rates: list[float], num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, kept_width(64, rates[0]), 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.conv1.out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes, block_index = self.conv1.out_channels, 0
        stage_rates = [rates[1], rates[2], rates[3], 0.0]
        for stage, (blocks, width, rate) in enumerate(zip(STAGE_BLOCKS, STAGE_WIDTHS, stage_rates), start=1):
            layer = nn.ModuleList()
            planes = kept_width(width, rate)
            for b in range(blocks):
                mid = kept_width(width // 4, rates[4 + block_index])
                stride = 2 if stage > 1 and b == 0 else 1
                layer.append(Bottleneck(mid, inplanes, planes, stride, downsample=b == 0))
                inplanes, block_index = planes, block_index + 1
            setattr(self, f"layer{stage}", layer)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(2048, num_classes)

    def stages(self) -> list[nn.ModuleList]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for layer in self.stages():
            for block in layer:
                x = block(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.forward_features(x)), 1))


def resnet50_layout(model: ResNet50) -> ChannelLayout:
    """Stem; per stage one output group (all conv3 + the downsample conv); conv1 and conv2 groups per block."""
    b = LayoutBuilder()
    previous = b.group("stem", ["conv1", "bn1"], rate_index=0)
    block_index = 0
    for stage, blocks in enumerate(STAGE_BLOCKS, start=1):
        names = [f"layer{stage}.{i}" for i in range(blocks)]
        producers = [f"layer{stage}.0.downsample.0", f"layer{stage}.0.downsample.1"]
        producers += [m for n in names for m in (f"{n}.conv3", f"{n}.bn3")]
        out = b.group(f"layer{stage}.out", producers,
                      scored=[f"{n}.conv3" for n in names] + [f"layer{stage}.0.downsample.0"],
                      rate_index=stage if stage < 4 else None)
        for i, name in enumerate(names):
            block_input = previous if i == 0 else out
            c1 = b.group(f"{name}.conv1", [f"{name}.conv1", f"{name}.bn1"], rate_index=4 + block_index)
            c2 = b.group(f"{name}.conv2", [f"{name}.conv2", f"{name}.bn2"], rate_index=4 + block_index)
            b.feed(f"{name}.conv1", block_input)
            if i == 0:
                b.feed(f"{name}.downsample.0", block_input)
            b.feed(f"{name}.conv2", c1)
            b.feed(f"{name}.conv3", c2)
            block_index += 1
        previous = out
    b.feed("fc", previous)
    return b.build()


@register_model("resnet_50", layout=resnet50_layout, num_rates=20, num_classes=1000, input_size=224,
                dataset="imagenet")
def resnet_50(rates: list[float], num_classes: int) -> ResNet50:
    return ResNet50(rates, num_classes)
