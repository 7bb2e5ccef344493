"""Architectures, each built from a compress-rate list and described by a channel layout.

``build_model(arch, compress_rate, num_classes)`` builds one; ``channel_layout(model)`` describes how
its channels couple, which is all the generic pruning code needs.
"""
from __future__ import annotations

from torch import nn

# Importing the families registers them.
from models import densenet, googlenet, mobilenet_v2, resnet_cifar, resnet_imagenet, vgg  # noqa: E402,F401
from models.layout import ChannelGroup, ChannelLayout
from models.registry import ArchSpec, arch_spec, build_model, list_models, register_model

__all__ = ["build_model", "list_models", "register_model", "arch_spec", "ArchSpec", "channel_layout",
           "ChannelGroup", "ChannelLayout", "num_outputs"]


def num_outputs(model: nn.Module) -> int | None:
    """out_features of the model's last Linear layer (its classes), None when it has none."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else None


def channel_layout(model: nn.Module, arch: str | None = None) -> ChannelLayout:
    """The channel layout of a model built by ``build_model`` (its ``arch`` attribute names the family)."""
    name = arch or getattr(model, "arch", None)
    if name is None:
        raise ValueError("model has no 'arch' attribute; pass arch=")
    return arch_spec(name).layout(model)
