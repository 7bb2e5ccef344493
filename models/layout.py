"""Channel layouts: how each architecture's channels couple, described once per architecture.

A *channel group* is a set of channels that must be kept or removed together: the output channels of
one conv (and the BatchNorm after it), or of several convs joined by identity shortcuts (a residual
stage), plus any depthwise conv that follows them. Its *producers* are the modules whose output
channels are the group (sliced on dim 0); its *scored* convs are those whose filters rank it.
A module's *inputs* list the groups whose channels, concatenated in order, make up its input channels
(sliced on dim 1 of a conv or linear weight, dim 0 of a BatchNorm that consumes them).
Generic code (``coring.surgery``) reads this to rank, slice and copy weights for any architecture.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from torch import nn

__all__ = ["ChannelGroup", "ChannelLayout", "LayoutBuilder", "module_out_channels"]


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that are kept or removed together."""

    name: str
    producers: tuple[str, ...]
    scored: tuple[str, ...]
    rate_index: int | None = None  # compress-rate entry that sets the width; None: fixed or derived


@dataclass(frozen=True)
class ChannelLayout:
    """All channel groups of a model and which groups feed each module's input channels."""

    groups: tuple[ChannelGroup, ...]
    inputs: Mapping[str, tuple[str, ...]]
    ties: tuple[tuple[str, str], ...] = ()  # groups joined by an identity when their widths agree

    def group(self, name: str) -> ChannelGroup:
        for group in self.groups:
            if group.name == name:
                return group
        raise KeyError(f"no channel group named {name!r}")

    def producer_of(self) -> dict[str, str]:
        """Module name -> the group its output channels belong to."""
        return {module: group.name for group in self.groups for module in group.producers}

    def widths(self, model: nn.Module) -> dict[str, int]:
        """Current width of every group, read from its first producer in ``model``."""
        modules = dict(model.named_modules())
        return {g.name: module_out_channels(modules[g.producers[0]]) for g in self.groups}


def module_out_channels(module: nn.Module) -> int:
    """Output channels of a conv, BatchNorm or linear layer."""
    if isinstance(module, nn.Conv2d):
        return module.out_channels
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return module.num_features
    if isinstance(module, nn.Linear):
        return module.out_features
    raise TypeError(f"cannot read output channels of {type(module).__name__}")


@dataclass
class LayoutBuilder:
    """Small helper that architectures use to declare their layout step by step."""

    groups: list[ChannelGroup] = field(default_factory=list)
    inputs: dict[str, tuple[str, ...]] = field(default_factory=dict)
    ties: list[tuple[str, str]] = field(default_factory=list)

    def group(self, name: str, producers: list[str] | tuple[str, ...], scored: list[str] | tuple[str, ...] | None = None,
              rate_index: int | None = None) -> str:
        """Declare a group; ``scored`` (the convs that rank it) defaults to the first producer."""
        self.groups.append(ChannelGroup(name, tuple(producers), tuple(scored if scored is not None else producers[:1]),
                                        rate_index))
        return name

    def add_producers(self, name: str, modules: list[str]) -> None:
        """Append producers to group ``name`` (e.g. a depthwise conv that carries the group's channels)."""
        index = next(i for i, g in enumerate(self.groups) if g.name == name)
        group = self.groups[index]
        self.groups[index] = ChannelGroup(group.name, group.producers + tuple(modules), group.scored, group.rate_index)

    def feed(self, module: str, *groups: str) -> None:
        """``module``'s input channels are the concatenation of ``groups``."""
        self.inputs[module] = tuple(groups)

    def tie(self, first: str, second: str) -> None:
        self.ties.append((first, second))

    def build(self) -> ChannelLayout:
        names = [g.name for g in self.groups]
        if len(names) != len(set(names)):
            raise ValueError("channel group declared twice")
        return ChannelLayout(tuple(self.groups), dict(self.inputs), tuple(self.ties))
