"""Model registry: ``@register_model`` on small builders, ``build_model(arch, compress_rate)``."""
from __future__ import annotations

import functools
import operator
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from models.compress import CompressRateError, as_rate_list, format_compress_rate, kept_width
from models.layout import ChannelLayout, module_out_channels

__all__ = ["ArchSpec", "register_model", "build_model", "check_compress_rate", "list_models", "arch_spec"]


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

    State-dict keys and shapes are those of the paper's code for the same arch and rate. A rate that leaves a
    layer without channels is a `CompressRateError` naming the layer and its width, raised before any weight
    is made; a ``num_classes`` below 1 is a ValueError.
    """
    spec = arch_spec(arch)
    classes = _checked_classes(num_classes, spec)
    rates = as_rate_list(compress_rate, spec.num_rates, arch)
    model = _build_checked(spec, rates, classes)
    model.arch = arch  # type: ignore[attr-defined]
    return model


def check_compress_rate(arch: str, compress_rate: str | Sequence[float] | None) -> list[float]:
    """The rates of ``compress_rate`` once checked against ``arch`` as `build_model` would, without weights.

    Entry points call it before any expensive step: a malformed string, a list too short for the arch or a
    layer left without channels is a one-line `CompressRateError`.
    """
    spec = arch_spec(arch)
    rates = as_rate_list(compress_rate, spec.num_rates, arch)
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        _build_checked(spec, rates, spec.num_classes)
    return rates


def _checked_classes(num_classes: int | None, spec: ArchSpec) -> int:
    if num_classes is None:
        return spec.num_classes
    try:
        classes = operator.index(num_classes)
    except TypeError:
        raise ValueError(f"num_classes must be a whole number >= 1, got {num_classes!r}") from None
    if classes < 1:
        raise ValueError(f"num_classes must be a whole number >= 1, got {classes}")
    return classes


@functools.cache
def _unpruned_widths(arch: str) -> tuple[ChannelLayout, dict[str, int]]:
    """The layout of ``arch`` and the width of each of its channel groups when unpruned (built on ``meta``)."""
    spec = arch_spec(arch)
    with torch.device("meta"):
        model = spec.builder([0.0] * (spec.num_rates + spec.extra_rates), spec.num_classes)
    layout = spec.layout(model)
    return layout, layout.widths(model)


def _empty_layer_error(spec: ArchSpec, rates: list[float], layer: str, detail: str) -> CompressRateError:
    return CompressRateError(f"compress rate {format_compress_rate(rates)} leaves layer '{layer}' of {spec.name} "
                             f"with 0 channels ({detail}); every layer must keep at least one channel")


def _zero_width_group(spec: ArchSpec, rates: list[float], *, follow_inputs: bool) -> CompressRateError | None:
    """The error for the first channel group that ``rates`` empty, None when there is none.

    A group's width is ``int(w * (1 - r))`` of its rate entry ``r``; ``w`` is its unpruned width, or with
    ``follow_inputs`` the smaller of that and its (pruned) input channels (DenseNet's transitions shrink what
    reaches them). The second reading is only used to explain a build that failed.
    """
    layout, widths = _unpruned_widths(spec.name)
    pruned: dict[str, int] = {}
    for group in layout.groups:
        index = group.rate_index
        pruned[group.name] = widths[group.name]
        if index is None or index >= len(rates):
            continue
        base, what = widths[group.name], f"of its {widths[group.name]}"
        inputs = layout.inputs.get(group.producers[0], ())
        if follow_inputs and inputs and sum(pruned.get(g, widths[g]) for g in inputs) < base:
            base = sum(pruned.get(g, widths[g]) for g in inputs)
            what = f"of the {base} channels reaching it"
        pruned[group.name] = kept_width(base, rates[index])
        if base > 0 and pruned[group.name] < 1:
            detail = f"rate entry {index} is {rates[index]} and int({base} * (1 - {rates[index]})) = 0 {what}"
            return _empty_layer_error(spec, rates, group.producers[0], detail)
    return None


def _build_checked(spec: ArchSpec, rates: list[float], num_classes: int) -> nn.Module:
    """``spec.builder(rates, num_classes)``, refusing rates that leave a layer with no channels."""
    error = _zero_width_group(spec, rates, follow_inputs=False)
    if error is not None:
        raise error
    try:
        with warnings.catch_warnings():  # a zero-width layer is refused below; its init warning says nothing more
            warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
            model = spec.builder(rates, num_classes)
    except (ArithmeticError, ValueError, RuntimeError):  # e.g. an initialiser dividing by a width of 0
        error = _zero_width_group(spec, rates, follow_inputs=True)
        if error is not None:
            raise error from None
        raise
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)):
            inputs = getattr(module, "in_channels", getattr(module, "in_features", 1))
            if module_out_channels(module) < 1 or inputs < 1:
                raise _empty_layer_error(spec, rates, name, f"{inputs} in, {module_out_channels(module)} out")
    return model
