"""Build the model a checkpoint needs, from the command line's values or the checkpoint's own record."""
from __future__ import annotations

from torch import nn

from coring.generic import rebuild_from_checkpoint
from models import build_model

__all__ = ["model_from_checkpoint"]


def model_from_checkpoint(checkpoint: dict, arch: str | None = None, compress_rate: str | None = None,
                          num_classes: int | None = None) -> nn.Module:
    """Build the model a checkpoint needs: CLI values win, else what the checkpoint recorded.

    Checkpoints of networks pruned through ``prune.py --model`` (any CNN) are rebuilt from their record.
    """
    if "generic" in checkpoint:  # written by coring.generic.save_generic
        return rebuild_from_checkpoint(checkpoint)
    arch = arch or checkpoint.get("arch")
    if arch is None:
        raise ValueError("the checkpoint does not record its architecture; pass --arch")
    rate = compress_rate if compress_rate is not None else checkpoint.get("compress_rate")
    classes = num_classes if num_classes is not None else checkpoint.get("num_classes")
    return build_model(arch, rate, classes)
