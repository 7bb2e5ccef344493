"""MobileNetV2 for CIFAR-10 (stride 1 in the first conv and stage 2), the paper's key names.

Rates (8 entries): cr[0] unused; cr[1..7] scale each stage's output width. A block's expanded width is
its (possibly pruned) input width times t, so it shrinks with the previous stage.
"""
from __future__ import annotations

import torch
from torch import nn

from models.compress import kept_width
from models.init import he_normal_init
from models.layout import ChannelLayout, LayoutBuilder
from models.registry import register_model

# t (expansion), c (output channels), n (blocks), s (stride of the first block) per stage, CIFAR strides
STAGES = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
STEM_WIDTH, LAST_WIDTH = 32, 1280


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(inp * expand_ratio)
        self.expand_ratio = expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers += [nn.Conv2d(inp, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
                   nn.ReLU6(inplace=True), nn.Conv2d(hidden, oup, 1, bias=False), nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, rates: list[float], num_classes: int = 10, first_stride: int = 1,
                 stage_strides: tuple[int, ...] | None = None) -> None:
        super().__init__()
        features: list[nn.Module] = [nn.Sequential(nn.Conv2d(3, STEM_WIDTH, 3, first_stride, 1, bias=False),
                                                   nn.BatchNorm2d(STEM_WIDTH), nn.ReLU6(inplace=True))]
        inp = STEM_WIDTH
        for stage, (t, c, n, s) in enumerate(STAGES, start=1):
            stride = stage_strides[stage - 1] if stage_strides else s
            out = kept_width(c, rates[stage])
            for i in range(n):
                features.append(InvertedResidual(inp, out, stride if i == 0 else 1, t))
                inp = out
        features.append(nn.Sequential(nn.Conv2d(inp, LAST_WIDTH, 1, bias=False), nn.BatchNorm2d(LAST_WIDTH),
                                      nn.ReLU6(inplace=True)))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(LAST_WIDTH, num_classes))
        he_normal_init(self, linear_std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x).mean(3).mean(2)
        return self.classifier(x)


def mobilenet_v2_layout(model: MobileNetV2) -> ChannelLayout:
    """Stage outputs shared by the residual blocks of a stage; a depthwise conv joins its input's group."""
    b = LayoutBuilder()
    previous = b.group("features.0", ["features.0.0", "features.0.1"])
    index = 1
    for stage, (t, _c, n, _s) in enumerate(STAGES, start=1):
        blocks = [f"features.{index + i}" for i in range(n)]
        project = 3 if t == 1 else 6
        out = b.group(f"stage{stage}", [m for blk in blocks for m in (f"{blk}.conv.{project}", f"{blk}.conv.{project + 1}")],
                      scored=[f"{blk}.conv.{project}" for blk in blocks], rate_index=stage)
        for i, blk in enumerate(blocks):
            block_input = previous if i == 0 else out
            if t == 1:  # depthwise conv straight on the block input: it carries the input's channels
                expanded = block_input
                b.add_producers(block_input, [f"{blk}.conv.0", f"{blk}.conv.1"])
            else:
                b.feed(f"{blk}.conv.0", block_input)
                expanded = b.group(f"{blk}.expand", [f"{blk}.conv.0", f"{blk}.conv.1", f"{blk}.conv.3", f"{blk}.conv.4"],
                                   scored=[f"{blk}.conv.0"])
            b.feed(f"{blk}.conv.{project}", expanded)
        previous, index = out, index + n
    b.feed(f"features.{index}.0", previous)
    last = b.group(f"features.{index}", [f"features.{index}.0", f"features.{index}.1"])
    b.feed("classifier.1", last)
    return b.build()


@register_model("mobilenet_v2", layout=mobilenet_v2_layout, num_rates=8, num_classes=10, input_size=32,
                dataset="cifar10")
def mobilenet_v2(rates: list[float], num_classes: int) -> MobileNetV2:
    return MobileNetV2(rates, num_classes)
