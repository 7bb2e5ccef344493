"""Choose the kept channels of every channel group: ties, ranking with CORING, optional rank cache."""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from coring.feature_criteria import Batch, check_batches, data_key, feature_scores, layout_sources
from coring.rank import combine_scores, is_data_driven, rank_groups, select_from_saliency
from models.layout import ChannelLayout

__all__ = ["scoring_units", "select_channels"]


def scoring_units(layout: ChannelLayout, src_widths: Mapping[str, int],
                  dst_widths: Mapping[str, int]) -> list[list[str]]:
    """Partition the groups into units that share one selection.

    Groups joined by a tie (an identity shortcut) share a selection when both their original and
    their target widths agree; otherwise the architecture passes channels by position and they stay apart.
    """
    parent = {g.name: g.name for g in layout.groups}

    def find(name: str) -> str:
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    for a, b in layout.ties:
        if src_widths[a] == src_widths[b] and dst_widths[a] == dst_widths[b]:
            parent[find(b)] = find(a)
    units: dict[str, list[str]] = {}
    for group in layout.groups:
        units.setdefault(find(group.name), []).append(group.name)
    return list(units.values())


def select_channels(model: nn.Module, layout: ChannelLayout, dst_widths: Mapping[str, int],
                    criterion: str = "VBD_dis", strategy: str = "min_sum", *, seed: int = 0,
                    cache=None, batches: Iterable[Batch] | None = None,
                    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Kept channel indices (sorted) per group of ``model`` for the target widths, and the saliencies used.

    Groups that keep their width are not ranked. The groups of one unit are ranked together from all
    their scored convs (``coring.rank.rank_groups`` batches units of equal width through one greedy loop).
    Data-driven criteria (``hrank``, ``chip``, ``taylor``) need ``batches`` of ``(images, labels)``: each scored
    conv of the unit is scored on its feature source (``coring.feature_criteria.layout_sources``), all in one
    pass over the batches, and the unit's score is ``coring.rank.combine_scores`` of them.
    """
    data_driven = is_data_driven(criterion)
    if data_driven:
        batches = check_batches(batches, criterion)

    src_widths = layout.widths(model)
    modules = dict(model.named_modules())
    keep: dict[str, torch.Tensor] = {}
    to_rank: list[tuple[list[str], list[torch.Tensor]]] = []
    for unit in scoring_units(layout, src_widths, dst_widths):
        n_src, n_dst = src_widths[unit[0]], dst_widths[unit[0]]
        if n_dst > n_src:
            raise ValueError(f"group {unit[0]!r} would grow from {n_src} to {n_dst} channels; pruning only removes")
        if n_dst == n_src:
            for name in unit:
                keep[name] = torch.arange(n_src)
            continue
        scored = [conv for name in unit for conv in layout.group(name).scored]
        to_rank.append((unit, [modules[conv].weight.detach() for conv in scored]))

    names = ["+".join(unit) for unit, _ in to_rank]
    groups = [weights for _, weights in to_rank]
    if not groups:
        ranked: list[torch.Tensor] = []
    elif data_driven:
        sources = [[src for name in unit for src in layout_sources(layout.group(name), modules)]
                   for unit, _ in to_rank]

        def compute(indices: list[int]) -> list[torch.Tensor]:
            scores = feature_scores(model, [src for i in indices for src in sources[i]], criterion, batches)
            return [combine_scores([scores[src] for src in sources[i]]) for i in indices]

        if cache is not None:
            ranked = cache.rank_groups(groups, names, criterion, strategy, seed=seed,
                                       data=data_key(model, batches), compute=compute)
        else:
            ranked = compute(list(range(len(groups))))
    elif cache is not None:
        ranked = cache.rank_groups(groups, names, criterion, strategy, seed=seed)
    else:
        ranked = rank_groups(groups, criterion, strategy, seed=seed, names=names)
    saliencies: dict[str, torch.Tensor] = {}
    for (unit, _), saliency in zip(to_rank, ranked):
        kept = select_from_saliency(saliency, dst_widths[unit[0]]).cpu()
        for name in unit:
            keep[name] = kept
            saliencies[name] = saliency.cpu()
    return keep, saliencies
