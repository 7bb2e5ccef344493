"""CORING's filter saliency as a Torch-Pruning importance: one score per channel of a dependency group.

Torch-Pruning (``torch_pruning``, 1.6) finds the layers coupled by residual adds, concatenations and depthwise
convs and groups them: a *group* is a set of ``(dependency, indices)`` items that must lose the same channels.
Its pruners call an importance on every group and remove the channels of LOWEST importance, so a score here is
"higher = keep", exactly as ``coring.rank``'s saliency.

Which filters are scored
    Every conv (and linear) layer whose OUTPUT channels are in the group, not only the group's root: a residual
    stage's convs (ResNet's ``conv2``/``conv3`` of every block and the downsample conv) are coupled by the adds and
    are ranked together with :func:`coring.rank.group_saliency` (one averaged pairwise matrix, one greedy run), as
    the built-in path treats residual stages (spec decision 5).
Depthwise convs
    A depthwise conv (``groups == in_channels == out_channels``) whose channels are in the group follows the
    conv that feeds it: it is not scored when any other conv or linear output is in the group (MobileNet's
    expand conv decides for its depthwise conv). A group of depthwise convs only is ranked on their ``kh x kw``
    filters.
Linear layers
    Their rows are ranked as ``1 x 1`` filters (one informative mode: the input vector), combined with the convs
    of the same group. Transposed convs are ranked on their output filters (``weight.transpose(0, 1)``).
Layers that cover only part of the group
    (a conv whose output lands on a subset of the group's channels, e.g. through a split) cannot join the
    group's ``N x N`` matrix and are left out of the score.
Groups with no conv or linear output
    (an LSTM root, a group that only reaches norms and unwrapped parameters, attention groups re-rooted at a
    consumer) fall back to Torch-Pruning's group L2 magnitude, with a warning naming the group.

The score returned is the channel's position in the stable ascending order of its saliency (0 = removed first),
so Torch-Pruning's ``topk(largest=False)`` removes exactly the channels that :func:`coring.rank.select_from_saliency`
drops, ties included (among equal saliencies the lower index goes first). Ranks are not comparable across groups:
use local (per-group) pruning ratios, not ``global_pruning=True``.

All importances of one pruner step are computed before any group is pruned, so a one-shot step ranks every
layer on its original filters; with several iterative steps, later steps rank the partly pruned filters.
"""
from __future__ import annotations

import warnings

import torch
import torch_pruning as tp
from torch import Tensor, nn

from coring.rank import canonical_criterion, canonical_strategy, rank_groups

__all__ = ["CoringImportance", "is_depthwise", "ranks_from_saliency", "scored_layers"]


def is_depthwise(module: nn.Module) -> bool:
    """True for a depthwise conv: one filter per input channel (``groups == in_channels == out_channels > 1``)."""
    return (isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1
            and module.groups == module.in_channels == module.out_channels)


def _output_filters(module: nn.Module) -> Tensor | None:
    """``[out, ...]`` filters of a conv (transposed ones too) or a linear layer; None for other modules."""
    if isinstance(module, nn.modules.conv._ConvNd):
        weight = module.weight.detach()
        return weight.transpose(0, 1) if module.transposed else weight
    if isinstance(module, nn.Linear):
        return module.weight.detach()
    return None


def scored_layers(group: tp.dependency.Group) -> list[tuple[str, Tensor]]:
    """The ``(name, filters)`` that CORING scores for ``group``, filters in the order of the group's root indices.

    Conv/linear layers whose output channels cover all the group's channels; depthwise convs only when no other
    layer qualifies. Empty when no conv or linear output covers the group (the caller falls back to L2).
    """
    dg = group._DG
    root_idxs = list(group[0].root_idxs)
    position = {int(r): p for p, r in enumerate(root_idxs)}
    n = len(root_idxs)
    regular: list[tuple[str, Tensor]] = []
    depthwise: list[tuple[str, Tensor]] = []
    seen: set[int] = set()
    for item in group:
        dep, idxs = item
        module = dep.target.module
        if id(module) in seen or not dg.is_out_channel_pruning_fn(dep.handler):
            continue
        filters = _output_filters(module)
        if filters is None:
            continue
        seen.add(id(module))
        pos = [position.get(int(r), -1) for r in item.root_idxs]
        if len(pos) != n or sorted(pos) != list(range(n)):
            continue  # covers part of the group only
        rows = torch.empty(n, dtype=torch.long)
        rows[torch.tensor(pos, dtype=torch.long)] = torch.as_tensor([int(i) for i in idxs], dtype=torch.long)
        entry = (dg._module2name.get(module, type(module).__name__), filters[rows.to(filters.device)])
        (depthwise if is_depthwise(module) else regular).append(entry)
    return regular or depthwise


class CoringImportance(tp.importance.Importance):
    """CORING saliency of every channel of a Torch-Pruning group (higher = keep); see the module docstring.

    ``criterion``: a ``coring.rank`` criterion (``VBD_dis``, ``Euclide_dis``, ``cosine_sim``, ``Manhattan_dis``,
    ``Pearson_sim``, ``SNR_dis``, their aliases, or the baselines ``l1``, ``l2``, ``random``); ``strategy``:
    ``min_sum``, ``min_min`` or ``sum``; ``seed`` seeds ``random`` per group (keyed by the root layer's name).
    ``saliency`` keeps the last raw saliency computed for each root layer name (for inspection and tests).
    """

    def __init__(self, criterion: str = "VBD_dis", strategy: str = "min_sum", *, seed: int = 0) -> None:
        self.criterion = canonical_criterion(criterion)
        self.strategy = canonical_strategy(strategy)
        self.seed = seed
        self.saliency: dict[str, Tensor] = {}
        self._fallback = tp.importance.GroupMagnitudeImportance(p=2)

    def __repr__(self) -> str:
        return f"CoringImportance(criterion={self.criterion!r}, strategy={self.strategy!r}, seed={self.seed})"

    @torch.no_grad()
    def __call__(self, group: tp.dependency.Group, **_: object) -> Tensor | None:
        layers = scored_layers(group)
        root_name = group._DG._module2name.get(group[0].dep.target.module, "?")
        if not layers:
            warnings.warn(f"CoringImportance: group rooted at {root_name!r} has no conv or linear output covering "
                          f"its channels; falling back to the L2 magnitude", stacklevel=2)
            return self._fallback(group)
        weights = [w for _, w in layers]
        saliency = rank_groups([weights], self.criterion, self.strategy, seed=self.seed, names=[root_name])[0]
        self.saliency[root_name] = saliency.detach().cpu()
        return ranks_from_saliency(saliency)


def ranks_from_saliency(saliency: Tensor) -> Tensor:
    """Position of each channel in the stable ascending sort of ``saliency`` (float64, 0 = removed first).

    Removing the ``k`` lowest ranks drops the same channels as ``coring.rank.select_from_saliency(saliency, N - k)``.
    """
    order = torch.argsort(saliency.detach().cpu(), stable=True)
    ranks = torch.empty_like(order, dtype=torch.float64)
    ranks[order] = torch.arange(order.numel(), dtype=torch.float64)
    return ranks
