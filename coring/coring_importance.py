"""CORING's filter saliency as a Torch-Pruning importance: one score per channel of a dependency group.

Torch-Pruning (``torch_pruning``, 1.6) finds the layers coupled by residual adds, concatenations and depthwise
convs and groups them: a *group* is a set of ``(dependency, indices)`` items that must lose the same channels.
Its pruners call an importance on every group and remove the channels of LOWEST importance, so a score here is
"higher = keep", exactly as ``coring.rank``'s saliency.

Which filters are scored
    Every conv (and linear) layer whose OUTPUT channels are in the group, not only the group's root: a residual
    stage's convs (ResNet's ``conv2``/``conv3`` of every block and the downsample conv) are coupled by the adds and
    are ranked together with :func:`coring.rank.group_saliency` (one averaged pairwise matrix, one greedy run), as
    the built-in path treats residual stages (docs/design.md, "Channel groups and surgery").
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

Data-driven criteria (``hrank``, ``chip``, ``taylor``)
    Take ``batches`` of ``(images, labels)``. Each scored conv is scored on a feature map
    (``coring.feature_criteria``): the output of the BatchNorm the conv feeds directly (ReLU of it for ``hrank``
    and ``chip``), else the conv's own output; several scored convs are combined with
    ``coring.rank.combine_scores``. Only 2-D convs are scored this way (a group whose outputs are linear layers
    only falls back to L2, with the warning). Every conv of the model is scored in one pass over the batches, the
    first time a group is asked for, and again whenever the model's layer widths have changed (the next shot of an
    iterative run). Unlike the built-in MobileNetV2 layout, an expand conv is scored on its own BatchNorm, not on
    the depthwise conv's that follows it.

The score returned is the channel's position in the stable ascending order of its saliency (0 = removed first),
so Torch-Pruning's ``topk(largest=False)`` removes exactly the channels that :func:`coring.rank.select_from_saliency`
drops, ties included (among equal saliencies the lower index goes first). Ranks are not comparable across groups:
use local (per-group) pruning ratios, not ``global_pruning=True``.

All importances of one pruner step are computed before any group is pruned, so a one-shot step ranks every
layer on its original filters; with several iterative steps, later steps rank the partly pruned filters.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch
import torch_pruning as tp
from torch import Tensor, nn

from coring.feature_criteria import Batch, check_batches, feature_scores
from coring.rank import canonical_criterion, canonical_strategy, combine_scores, is_data_driven, rank_groups
from coring.rank_cache import RankCache

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
    return [(name, filters[rows.to(filters.device)]) for name, _, filters, rows in _scored_items(group)]


def _scored_items(group: tp.dependency.Group) -> list[tuple[str, nn.Module, Tensor, Tensor]]:
    """``(name, module, all output filters, rows)`` of :func:`scored_layers`; ``rows[p]`` is the module's channel
    at the group's root position ``p``."""
    dg = group._DG
    root_idxs = list(group[0].root_idxs)
    position = {int(r): p for p, r in enumerate(root_idxs)}
    n = len(root_idxs)
    regular: list[tuple[str, nn.Module, Tensor, Tensor]] = []
    depthwise: list[tuple[str, nn.Module, Tensor, Tensor]] = []
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
        entry = (dg._module2name.get(module, type(module).__name__), module, filters, rows)
        (depthwise if is_depthwise(module) else regular).append(entry)
    return regular or depthwise


class CoringImportance(tp.importance.Importance):
    """CORING saliency of every channel of a Torch-Pruning group (higher = keep); see the module docstring.

    ``criterion``: a ``coring.rank`` criterion (``VBD_dis``, ``Euclide_dis``, ``cosine_sim``, ``Manhattan_dis``,
    ``Pearson_sim``, ``SNR_dis``, their aliases, the weight-only baselines ``l1``, ``l2``, ``random``, ``fpgm``,
    or the data-driven ``hrank``, ``chip``, ``taylor``, which need ``batches``); ``strategy``: ``min_sum``,
    ``min_min`` or ``sum``; ``seed`` seeds ``random`` per group (keyed by the root layer's name).
    ``saliency`` keeps the last raw saliency computed for each root layer name (for inspection and tests).
    ``cache``: a ``coring.rank_cache.RankCache`` that answers weight-based ranks it holds (keyed by the group's root
    layer name and its filters) and stores the others; data-driven scores are not cached on this path.
    """

    def __init__(self, criterion: str = "VBD_dis", strategy: str = "min_sum", *, seed: int = 0,
                 batches: Iterable[Batch] | None = None, cache: RankCache | None = None) -> None:
        self.cache = cache
        self.criterion = canonical_criterion(criterion)
        self.strategy = canonical_strategy(strategy)
        self.seed = seed
        self.batches = check_batches(batches, self.criterion) if is_data_driven(self.criterion) else None
        self.saliency: dict[str, Tensor] = {}
        self._fallback = tp.importance.GroupMagnitudeImportance(p=2)
        self._features: tuple[tuple, dict[nn.Module, Tensor]] | None = None

    def __repr__(self) -> str:
        return f"CoringImportance(criterion={self.criterion!r}, strategy={self.strategy!r}, seed={self.seed})"

    @torch.no_grad()
    def __call__(self, group: tp.dependency.Group, **_: object) -> Tensor | None:
        items = _scored_items(group)
        root_name = group._DG._module2name.get(group[0].dep.target.module, "?")
        if self.batches is not None:
            features = self._feature_scores(group._DG)
            scores = [features[module][rows.to(features[module].device)]
                      for _, module, _, rows in items if module in features]
            saliency = combine_scores(scores) if scores else None
        elif items:
            weights = [filters[rows.to(filters.device)] for _, _, filters, rows in items]
            if self.cache is not None:
                saliency = self.cache.rank_groups([weights], [root_name], self.criterion, self.strategy,
                                                  seed=self.seed)[0]
            else:
                saliency = rank_groups([weights], self.criterion, self.strategy, seed=self.seed, names=[root_name])[0]
        else:
            saliency = None
        if saliency is None:
            what = "conv" if self.batches is not None else "conv or linear"
            warnings.warn(f"CoringImportance: group rooted at {root_name!r} has no {what} output covering "
                          f"its channels; falling back to the L2 magnitude", stacklevel=2)
            return self._fallback(group)
        self.saliency[root_name] = saliency.detach().cpu()
        return ranks_from_saliency(saliency)

    def _feature_scores(self, dg: tp.DependencyGraph) -> dict[nn.Module, Tensor]:
        """Data-driven scores of every 2-D conv of the traced model (by module), recomputed when widths change."""
        model = dg.model
        convs = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
        key = (id(model), tuple((name, m.in_channels, m.out_channels) for name, m in convs))
        if self._features is not None and self._features[0] == key:
            return self._features[1]
        names = {m: name for name, m in model.named_modules()}
        source: dict[nn.Module, str] = {}
        for name, conv in convs:
            node = dg.module2node.get(conv)
            norms = [] if node is None else [n.module for n in node.outputs
                                             if isinstance(n.module, nn.BatchNorm2d)
                                             and n.module.num_features == conv.out_channels]
            source[conv] = names[norms[0]] if len(norms) == 1 else name
        scores = feature_scores(model, source.values(), self.criterion, self.batches)
        features = {conv: scores[src] for conv, src in source.items()}
        self._features = (key, features)
        return features


def ranks_from_saliency(saliency: Tensor) -> Tensor:
    """Position of each channel in the stable ascending sort of ``saliency`` (float64, 0 = removed first).

    Removing the ``k`` lowest ranks drops the same channels as ``coring.rank.select_from_saliency(saliency, N - k)``.
    """
    order = torch.argsort(saliency.detach().cpu(), stable=True)
    ranks = torch.empty_like(order, dtype=torch.float64)
    ranks[order] = torch.arange(order.numel(), dtype=torch.float64)
    return ranks
