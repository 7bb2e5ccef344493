"""CORING filter ranking: HOSVD summaries, pairwise redundancy matrix, greedy strategies.

The pipeline for one layer (or several coupled layers that share output channels), one module per step
(``names``, ``summaries``, ``pairwise``, ``greedy``, ``groups``, ``selection``; this package re-exports them):

1. :func:`filter_summaries` -- a truncated HOSVD of every filter, batched over the layer: for each mode of
   length > 1, the leading left singular vector of the filter's mode unfolding, sign-normalised
   (docs/design.md, "Ranking").
2. :func:`pairwise_matrix` -- the ``N x N`` matrix ``S_ij = mean over (conv, informative mode) of
   metric(u_i, u_j)`` computed with Gram matrices in float64 (docs/design.md, "Pairwise matrix").
3. :func:`saliency_from_matrix` / :func:`saliency_from_matrices` -- the ``min_sum`` / ``min_min`` greedy
   removal loop (reproducing the paper's loop, tie-breaks included: docs/design.md, "Greedy strategies") or ``sum``.
4. :func:`select_from_saliency` -- keep the ``n_keep`` highest-saliency filters, sorted by index.

:func:`rank_groups` runs the whole pipeline for many groups at once (the greedy loop is batched over groups
with the same number of filters); :func:`filter_saliency`, :func:`group_saliency` and :func:`select_filters`
are thin wrappers around it. The weight-only criteria of the field, ``l1``, ``l2``, ``random`` and ``fpgm`` (He et
al., CVPR 2019), use the same entry points; the data-driven ones, ``hrank``, ``chip`` and ``taylor``, are named
here but scored from feature maps by :mod:`coring.feature_criteria` (``rank_groups`` refuses them: no data).

Everything is computed on the weight's device in float64 except the greedy loop, which runs on the host
(docs/design.md, "Greedy strategies"); saliencies are returned on the weight's device as float64 tensors,
higher = keep.
"""
from __future__ import annotations

from coring.rank.greedy import saliency_from_matrices, saliency_from_matrix
from coring.rank.groups import combine_scores, filter_saliency, fpgm_scores, group_saliency, rank_groups
from coring.rank.names import (
    BASELINE_CRITERIA,
    CRITERIA,
    CRITERION_ALIASES,
    DATA_CRITERIA,
    PAPER_CRITERIA,
    STRATEGIES,
    canonical_criterion,
    canonical_strategy,
    is_data_driven,
    is_distance,
)
from coring.rank.pairwise import pairwise_matrix
from coring.rank.selection import select_filters, select_from_saliency
from coring.rank.summaries import filter_summaries

__all__ = ['BASELINE_CRITERIA', 'CRITERIA', 'CRITERION_ALIASES', 'DATA_CRITERIA', 'PAPER_CRITERIA', 'STRATEGIES', 'canonical_criterion', 'canonical_strategy', 'combine_scores', 'filter_saliency', 'filter_summaries', 'fpgm_scores', 'group_saliency', 'is_data_driven', 'is_distance', 'pairwise_matrix', 'rank_groups', 'saliency_from_matrices', 'saliency_from_matrix', 'select_filters', 'select_from_saliency']
