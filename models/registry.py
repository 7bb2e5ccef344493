"""Model registry: ``@register_model`` on small builders, ``build_model(arch, compress_rate)``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from torch import nn

from models.compress import as_rate_list
from models.layout import ChannelLayout

__all__ = ["ArchSpec", "register_model", "build_model", "list_models", "arch_spec"]


@dataclass(frozen=True)
class ArchSpec:
    """What the toolkit knows about one architecture."""

    name: str
    builder: Callable[[list[float], int], nn.Module]
    layout: Callable[[nn.Module], ChannelLayout]
    num_rates: int          # entries the compress-rate list must have
    num_classes: int        # default classifier size
    input_size: int         # square input side (32 for CIFAR, 224 for ImageNet)
    dataset: str            # the dataset its paper rows use
    extra_rates: int = 0    # optional trailing entries that are used when present (VGG's 13th conv)


_REGISTRY: dict[str, ArchSpec] = {}


def register_model(name: str, *, layout: Callable[[nn.Module], ChannelLayout], num_rates: int, num_classes: int,
                   input_size: int, dataset: str, extra_rates: int = 0):
    """Decorator registering ``builder(rates, num_classes) -> nn.Module`` under ``name``."""

    def decorate(builder: Callable[[list[float], int], nn.Module]):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = ArchSpec(name, builder, layout, num_rates, num_classes, input_size, dataset, extra_rates)
        return builder

    return decorate


def arch_spec(arch: str) -> ArchSpec:
    """The registry entry of ``arch``; an unknown name lists the valid ones."""
    try:
        return _REGISTRY[arch]
    except KeyError:
        raise ValueError(f"unknown arch {arch!r}; expected one of {', '.join(sorted(_REGISTRY))}") from None


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def build_model(arch: str, compress_rate: str | Sequence[float] | None = None,
                num_classes: int | None = None) -> nn.Module:
    """Build ``arch`` slimmed by ``compress_rate`` (a paper-grammar string, a list, or None for unpruned).

    State-dict keys and shapes are those of the paper's code for the same arch and rate.
    """
    spec = arch_spec(arch)
    rates = as_rate_list(compress_rate, spec.num_rates, arch)
    model = spec.builder(rates, num_classes or spec.num_classes)
    model.arch = arch  # type: ignore[attr-defined]
    return model
