"""The whole ranking for many channel groups at once, CORING or a baseline criterion."""
from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from torch import Tensor

from coring.rank.greedy import saliency_from_matrices
from coring.rank.names import BASELINE_CRITERIA, DATA_CRITERIA, canonical_criterion, canonical_strategy, is_distance
from coring.rank.pairwise import _metric_matrix, pairwise_matrix
from coring.rank.summaries import filter_summaries

__all__ = ['combine_scores', 'filter_saliency', 'fpgm_scores', 'group_saliency', 'rank_groups']


def _group_seed(seed: int, key: str) -> int:
    """A 63-bit generator seed derived from the user seed and the group's key (its name or index)."""
    digest = hashlib.sha256(f"{int(seed)}/{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _label(name: str | None, index: int) -> str:
    return repr(name) if name is not None else f"#{index} (unnamed)"


def _check_group(weights: Sequence[Tensor], name: str | None, index: int) -> list[Tensor]:
    if isinstance(weights, Tensor):
        raise TypeError(f"group {_label(name, index)} must be a sequence of weight tensors, not a tensor")
    weights = list(weights)
    if not weights:
        raise ValueError(f"group {_label(name, index)} has no weights")
    n = weights[0].shape[0] if weights[0].dim() else None
    for k, w in enumerate(weights):
        if not isinstance(w, Tensor) or w.dim() < 2:
            shape = tuple(w.shape) if isinstance(w, Tensor) else type(w).__name__
            raise ValueError(f"layer {_label(name, index)}: weight {k + 1} must be a [N, ...] tensor, got {shape}")
        if w.shape[0] != n:
            raise ValueError(
                f"layer {_label(name, index)}: coupled convs must have the same number of filters, "
                f"got {[tuple(x.shape) for x in weights]}"
            )
        if not bool(torch.isfinite(w).all()):
            where = f" (weight {k + 1} of {len(weights)})" if len(weights) > 1 else ""
            raise ValueError(f"layer {_label(name, index)} has NaN/Inf weights{where}; cannot rank its filters")
    return weights


def fpgm_scores(weight: Tensor) -> Tensor:
    """FPGM score of every filter of ``weight`` ``[N, ...]``: ``sum_j |w_i - w_j|_2`` over the flattened filters.

    He et al. (CVPR 2019) prune the filters nearest the geometric median of the layer, approximated (as in their
    code) by the filter whose summed distance to the others is smallest: low = prune, so the score is a saliency.
    The distances are the pairwise matrix's Euclidean ones, in float64 (a Gram matrix, near-duplicate pairs
    recomputed from their difference).
    """
    w = weight.detach().to(torch.float64).reshape(weight.shape[0], -1)
    return _metric_matrix(w, "Euclide_dis").sum(dim=1)


def combine_scores(scores: Sequence[Tensor]) -> Tensor:
    """One per-channel score from the scores of several layers that share their channels (float64).

    One layer: its scores as they are. Several (the convs of a residual stage, coupled groups): the mean of each
    layer's scores divided by that layer's mean, so that layers of different scale weigh the same; a layer
    whose mean is 0 (every channel scores 0) contributes zeros.
    """
    scores = [s.detach().to(torch.float64) for s in scores]
    if not scores:
        raise ValueError("combine_scores needs at least one score tensor")
    if len(scores) == 1:
        return scores[0]
    device = scores[0].device
    total = torch.zeros_like(scores[0])
    for s in scores:
        mean = s.mean()
        total += torch.where(mean != 0, s / torch.where(mean != 0, mean, 1.0), 0.0).to(device)
    return total / len(scores)


def _baseline_saliency(weights: list[Tensor], crit: str, seed: int, key: str) -> Tensor:
    device = weights[0].device
    n = weights[0].shape[0]
    if crit == "fpgm":
        return combine_scores([fpgm_scores(w.to(device)) for w in weights])
    if crit == "random":
        gen = torch.Generator().manual_seed(_group_seed(seed, key))
        return torch.rand(n, generator=gen, dtype=torch.float64).to(device)
    p = 1 if crit == "l1" else 2
    total = torch.zeros(n, dtype=torch.float64, device=device)
    for w in weights:
        total += torch.linalg.vector_norm(w.detach().to(torch.float64).reshape(n, -1), ord=p, dim=1).to(device)
    return total


def rank_groups(
    groups: Sequence[Sequence[Tensor]],
    criterion: str = "VBD_dis",
    strategy: str = "min_sum",
    *,
    seed: int = 0,
    names: Sequence[str | None] | None = None,
) -> list[Tensor]:
    """Saliency (higher = keep) of every group of coupled convs, computed together.

    ``groups[g]`` lists the weights of the convs whose output channels are selected together (one weight for
    an ordinary layer); they must have the same number of filters. CORING criteria average the pairwise
    matrix over all the group's (conv, mode) pairs (:func:`pairwise_matrix`) and run the strategy once; the
    greedy loop is batched over all groups with the same number of filters. Baselines: ``l1`` / ``l2`` sum
    the convs' filter norms; ``random`` draws ``U(0, 1)`` from a ``torch.Generator`` seeded from ``seed`` and
    the group's key (its name, or ``"#g"`` when unnamed), so it does not depend on which other groups are
    ranked in the same call when names are given; ``fpgm`` combines the convs' :func:`fpgm_scores` with
    :func:`combine_scores`. ``strategy`` is validated but unused for baselines. Data-driven criteria
    (``DATA_CRITERIA``) need images, not only weights: they raise ValueError here.

    NaN or Inf in a weight raises ValueError naming the group (``names[g]``). Results are float64 tensors on
    the device of each group's first weight.
    """
    crit = canonical_criterion(criterion)
    strat = canonical_strategy(strategy)
    if crit in DATA_CRITERIA:
        raise ValueError(f"criterion {crit!r} is data-driven: it scores feature maps of training images, so it needs "
                         f"batches (coring.feature_criteria; --rank_batches N > 0 on the command line)")
    groups = list(groups)
    if names is None:
        names = [None] * len(groups)
    names = list(names)
    if len(names) != len(groups):
        raise ValueError(f"got {len(names)} names for {len(groups)} groups")
    checked = [_check_group(g, names[i], i) for i, g in enumerate(groups)]
    keys = [name if name is not None else f"#{i}" for i, name in enumerate(names)]

    if crit in BASELINE_CRITERIA:
        return [_baseline_saliency(ws, crit, seed, keys[i]) for i, ws in enumerate(checked)]

    distance = is_distance(crit)
    results: list[Tensor | None] = [None] * len(checked)
    batches: dict[tuple[int, torch.device], list[int]] = {}
    mats: list[Tensor] = []
    for i, ws in enumerate(checked):
        device = ws[0].device
        mats.append(pairwise_matrix([filter_summaries(w.to(device)) for w in ws], crit))
        batches.setdefault((ws[0].shape[0], device), []).append(i)
    for idx in batches.values():
        sal = saliency_from_matrices(torch.stack([mats[i] for i in idx]), distance, strat)
        for row, i in enumerate(idx):
            results[i] = sal[row]
    return results  # type: ignore[return-value]


def group_saliency(
    weights: Sequence[Tensor],
    criterion: str = "VBD_dis",
    strategy: str = "min_sum",
    *,
    seed: int = 0,
    name: str | None = None,
) -> Tensor:
    """Saliency of one group of coupled convs with the same N filters (one averaged matrix, one strategy run).

    Equals ``rank_groups([weights], criterion, strategy, seed=seed, names=[name])[0]``.
    """
    return rank_groups([weights], criterion, strategy, seed=seed, names=[name])[0]


def filter_saliency(
    weight: Tensor,
    criterion: str = "VBD_dis",
    strategy: str = "min_sum",
    *,
    seed: int = 0,
    name: str | None = None,
) -> Tensor:
    """Saliency of the filters of one conv weight ``[N, Cin/groups, kh, kw]``: ``Tensor[N]``, higher = keep.

    For ``min_sum`` / ``min_min`` it is the greedy removal order (0 = removed first, ``N - 1`` = last survivor);
    for ``sum`` the signed row sums; for baselines the norm or the seeded noise. ``name`` labels the layer in
    errors (NaN/Inf weights) and keys the ``random`` generator.
    """
    return rank_groups([[weight]], criterion, strategy, seed=seed, names=[name])[0]
