"""VGG-16-BN for CIFAR-10 with the paper's key names (``features.convN``, ``classifier.linear1``)."""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from models.compress import kept_width
from models.layout import ChannelLayout, LayoutBuilder
from models.registry import register_model

CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
CONV_POSITIONS = [i for i, v in enumerate(CFG) if v != "M"]


class VGG(nn.Module):
    """13 3x3 convs with bias + BN + ReLU, AvgPool(2), Linear-BN1d-ReLU-Linear classifier."""

    def __init__(self, widths: list[int], num_classes: int = 10) -> None:
        super().__init__()
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        in_channels, conv = 3, 0
        for i, v in enumerate(CFG):
            if v == "M":
                layers[f"pool{i}"] = nn.MaxPool2d(kernel_size=2, stride=2)
                continue
            layers[f"conv{i}"] = nn.Conv2d(in_channels, widths[conv], kernel_size=3, padding=1)
            layers[f"norm{i}"] = nn.BatchNorm2d(widths[conv])
            layers[f"relu{i}"] = nn.ReLU(inplace=True)
            in_channels, conv = widths[conv], conv + 1
        self.features = nn.Sequential(layers)
        self.avgpool = nn.AvgPool2d(2)
        self.classifier = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(in_channels, 512)),
            ("norm1", nn.BatchNorm1d(512)),
            ("relu1", nn.ReLU(inplace=True)),
            ("linear2", nn.Linear(512, num_classes)),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def vgg_layout(model: nn.Module) -> ChannelLayout:
    """One group per conv; each conv feeds the next, the last feeds ``classifier.linear1``."""
    b = LayoutBuilder()
    previous = None
    for index, pos in enumerate(CONV_POSITIONS):
        group = b.group(f"features.conv{pos}", [f"features.conv{pos}", f"features.norm{pos}"],
                        rate_index=index)
        if previous is not None:
            b.feed(f"features.conv{pos}", previous)
        previous = group
    b.feed("classifier.linear1", previous)
    return b.build()


@register_model("vgg_16_bn", layout=vgg_layout, num_rates=12, extra_rates=1, num_classes=10, input_size=32,
                dataset="cifar10")
def vgg_16_bn(rates: list[float], num_classes: int) -> VGG:
    """12 rates as in the paper (the 13th conv keeps 512 filters) or 13 rates (HEAD's prunable last conv)."""
    rates = list(rates[:13]) + [0.0] * (13 - len(rates[:13]))
    widths = [kept_width(CFG[pos], rates[i]) for i, pos in enumerate(CONV_POSITIONS)]
    return VGG(widths, num_classes)
