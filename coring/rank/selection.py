"""Step 4: the kept set, the ``n_keep`` filters of highest saliency, sorted by index."""
from __future__ import annotations

import numbers

import torch
from torch import Tensor

from coring.rank.groups import filter_saliency

__all__ = ['select_filters', 'select_from_saliency']


def _check_n_keep(n_keep: int, n: int) -> int:
    if isinstance(n_keep, bool) or not isinstance(n_keep, numbers.Integral):
        raise ValueError(f"n_keep must be an integer in [1, {n}], got {n_keep!r}")
    if not 1 <= int(n_keep) <= n:
        raise ValueError(f"n_keep must be in [1, {n}], got {n_keep}")
    return int(n_keep)


def select_from_saliency(saliency: Tensor, n_keep: int) -> Tensor:
    """Indices of the ``n_keep`` highest-saliency filters, sorted ascending (LongTensor, saliency's device).

    Uses a stable argsort (``sort(argsort(saliency)[N - n_keep:])``), so among equal saliencies the lower
    index is removed first. ``n_keep == N`` keeps everything; ``n_keep`` outside ``[1, N]`` is a ValueError.
    """
    if saliency.dim() != 1:
        raise ValueError(f"saliency must be 1-D, got shape {tuple(saliency.shape)}")
    n = saliency.shape[0]
    n_keep = _check_n_keep(n_keep, n)
    if n_keep == n:
        return torch.arange(n, device=saliency.device)
    order = torch.argsort(saliency, stable=True)
    return torch.sort(order[n - n_keep :]).values


def select_filters(
    weight: Tensor,
    n_keep: int,
    criterion: str = "VBD_dis",
    strategy: str = "min_sum",
    *,
    seed: int = 0,
    name: str | None = None,
) -> Tensor:
    """Kept filter indices of one conv, sorted ascending. ``n_keep == N`` returns ``arange(N)`` without ranking."""
    n = weight.shape[0]
    if _check_n_keep(n_keep, n) == n:
        return torch.arange(n, device=weight.device)
    saliency = filter_saliency(weight, criterion, strategy, seed=seed, name=name)
    return select_from_saliency(saliency, n_keep)
