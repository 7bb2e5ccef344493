"""The weight initialisation the paper's DenseNet and MobileNetV2 use (He-normal convs, unit BatchNorm)."""
from __future__ import annotations

import math

from torch import nn

__all__ = ["he_normal_init"]


def he_normal_init(model: nn.Module, *, linear_std: float | None = None) -> None:
    """Convs ~ N(0, 2 / (k*k*out)), BatchNorm weight 1 and bias 0; linear ~ N(0, linear_std) when given."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.weight.data.normal_(0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
            if m.bias is not None:
                m.bias.data.zero_()
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.data.fill_(1)
            m.bias.data.zero_()
        elif isinstance(m, nn.Linear) and linear_std is not None:
            m.weight.data.normal_(0, linear_std)
            m.bias.data.zero_()
