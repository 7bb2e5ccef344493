"""Architectures, each built from a compress-rate list and described by a channel layout.

``build_model(arch, compress_rate, num_classes)`` builds one; ``channel_layout(model)`` describes how
its channels couple, which is all the generic pruning code needs.
"""
from __future__ import annotations

from torch import nn

from models.layout import ChannelGroup, ChannelLayout
from models.registry import ArchSpec, arch_spec, build_model, list_models, register_model

# Importing the families registers them.
from models import vgg, resnet_cifar, densenet, googlenet, mobilenet_v2, resnet_imagenet  # noqa: E402,F401

__all__ = ["build_model", "list_models", "register_model", "arch_spec", "ArchSpec", "channel_layout",
           "ChannelGroup", "ChannelLayout", "model_from_checkpoint", "num_outputs"]


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


def model_from_checkpoint(checkpoint: dict, arch: str | None = None, compress_rate: str | None = None,
                          num_classes: int | None = None) -> nn.Module:
    """Build the model a checkpoint needs: CLI values win, else what the checkpoint recorded.

    Checkpoints of networks pruned through ``prune.py --model`` (any CNN) are rebuilt from their record.
    """
    if "generic" in checkpoint:  # written by main.generic.save_generic
        from main.generic import rebuild_from_checkpoint

        return rebuild_from_checkpoint(checkpoint)
    arch = arch or checkpoint.get("arch")
    if arch is None:
        raise ValueError("the checkpoint does not record its architecture; pass --arch")
    rate = compress_rate if compress_rate is not None else checkpoint.get("compress_rate")
    classes = num_classes if num_classes is not None else checkpoint.get("num_classes")
    return build_model(arch, rate, classes)
