"""Build the model a checkpoint needs, from the command line's values or the checkpoint's own record."""
from __future__ import annotations

from torch import nn

from coring.generic import load_user_model, model_label, rebuild_from_checkpoint
from models import build_model

__all__ = ["model_from_checkpoint"]


def model_from_checkpoint(checkpoint: dict, arch: str | None = None, compress_rate: str | None = None,
                          num_classes: int | None = None, model_spec: str | None = None) -> nn.Module:
    """Build the model a checkpoint needs: CLI values win, else what the checkpoint recorded.

    Checkpoints of networks pruned through ``prune.py --model`` (any CNN) are rebuilt from their record; one
    pruned from a user module needs ``model_spec`` (``--model path/to/file.py:ClassName``, which executes that
    file), since loading a checkpoint never imports a file it names. ``model_spec`` with a checkpoint that has no
    such record builds that model unpruned (a baseline trained by ``finetune.py --model``).
    """
    if "generic" in checkpoint:  # written by coring.generic.save_generic
        return rebuild_from_checkpoint(checkpoint, model_spec)
    if model_spec is not None:
        model = load_user_model(model_spec, num_classes if num_classes is not None else checkpoint.get("num_classes"))
        model.arch = model_label(model_spec)  # type: ignore[attr-defined]
        return model
    arch = arch or checkpoint.get("arch")
    if arch is None:
        raise ValueError("the checkpoint does not record its architecture; pass --arch")
    rate = compress_rate if compress_rate is not None else checkpoint.get("compress_rate")
    classes = num_classes if num_classes is not None else checkpoint.get("num_classes")
    return build_model(arch, rate, classes)
