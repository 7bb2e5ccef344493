"""What every part of the generic engine shares: the error type, the torchvision prefix, versions."""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import torch_pruning as tp
from torch import nn

__all__ = ["GenericModelError", "NOT_CNN_PREFIXES", "TORCHVISION_PREFIX", "tp_version"]


TORCHVISION_PREFIX = "torchvision:"
#: torchvision classification families that are transformers, not CNNs: CORING ranks conv filters, and
#: Torch-Pruning needs per-model attention-head settings for them.
NOT_CNN_PREFIXES: tuple[str, ...] = ("vit_", "swin_", "maxvit_")
#: torchvision models built without their training-only auxiliary heads (fine-tuning uses one output).
_NO_AUX = ("googlenet", "inception_v3")
_ROOT_TYPES = (nn.modules.conv._ConvNd, nn.Linear)
_FORMAT = 1  # version of the 'generic' checkpoint entry


def tp_version() -> str:
    """The installed torch-pruning distribution's version (its ``__version__`` string lags behind)."""
    try:
        return version("torch-pruning")
    except PackageNotFoundError:  # pragma: no cover - a source checkout
        return str(getattr(tp, "__version__", "unknown"))


class GenericModelError(ValueError):
    """A bad ``--model`` spec, a model that cannot be built, traced or rebuilt (one-line message)."""

