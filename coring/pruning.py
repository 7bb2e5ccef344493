"""Prune one ``build_model`` network to a compress rate: select the kept channels, build the slim twin, copy.

``prune`` also returns the kept channels and the saliencies; ``shot_rates`` gives K-shot's rounds.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from coring.selection import select_channels
from coring.surgery import transfer_weights
from models import build_model, channel_layout, num_outputs

__all__ = ["PruneResult", "prune", "prune_model", "shot_rates"]


@dataclass
class PruneResult:
    """The slim model, the kept channel indices per group and the saliencies that chose them."""

    model: nn.Module
    keep: dict[str, torch.Tensor]
    saliency: dict[str, torch.Tensor]


def prune(model: nn.Module, arch: str, compress_rate: str | Sequence[float], criterion: str = "VBD_dis",
          strategy: str = "min_sum", *, seed: int = 0, cache=None, num_classes: int | None = None,
          batches: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None) -> PruneResult:
    """Slim ``model`` (any ``build_model(arch, ...)`` instance, pruned or not) to ``build_model(arch, compress_rate)``.

    Rates are measured against the original widths, so a model already pruned at a lower rate can be
    pruned further (K-shot). The slim model is on ``model``'s device, in ``model``'s train/eval mode.
    ``batches`` of ``(images, labels)`` feed the data-driven criteria (``hrank``, ``chip``, ``taylor``), which
    refuse to run without them; weight-only criteria ignore them.
    """
    layout = channel_layout(model, arch)
    parameter = next(model.parameters())
    classes = num_classes if num_classes is not None else num_outputs(model)
    slim = build_model(arch, compress_rate, classes).to(device=parameter.device, dtype=parameter.dtype)
    dst_widths = channel_layout(slim, arch).widths(slim)
    keep, saliency = select_channels(model, layout, dst_widths, criterion, strategy, seed=seed, cache=cache,
                                     batches=batches)
    transfer_weights(model, slim, layout, keep)
    slim.train(model.training)
    return PruneResult(slim, keep, saliency)


def prune_model(model: nn.Module, arch: str, compress_rate: str | Sequence[float], criterion: str = "VBD_dis",
                strategy: str = "min_sum") -> nn.Module:
    """The slim model of ``build_model(arch, compress_rate)`` holding the kept weights of ``model``."""
    return prune(model, arch, compress_rate, criterion, strategy).model


def shot_rates(rates: Sequence[float], shots: int) -> list[list[float]]:
    """Rates of each round of K-shot pruning: r/K, r/(K-1), ..., r (docs/design.md, "Two engines, one run layer")."""
    if shots < 1:
        raise ValueError(f"--shot must be >= 1, got {shots}")
    return [[r / (shots - s) for r in rates] for s in range(shots)]
