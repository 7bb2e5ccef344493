"""Properties of the CORING ranking (coring.rank) that hold for any layer: duplicates go first, permutation
equivariance, scale/sign invariance, degenerate modes without NaN, exact greedy tie-breaks, clear errors.

Random layers are drawn from seeds (continuous Gaussian data, so no accidental ties); hypothesis runs
derandomized so the suite is deterministic.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from coring import rank
from coring.rank import (
    BASELINE_CRITERIA,
    CRITERIA,
    PAPER_CRITERIA,
    STRATEGIES,
    canonical_criterion,
    canonical_strategy,
    filter_saliency,
    group_saliency,
    pairwise_matrix,
    saliency_from_matrix,
    select_filters,
)
from tests.test_rank import ref_greedy

PROPERTY = settings(max_examples=25, deadline=None, derandomize=True)

SHAPES = {
    "conv3x3": [(3, 3, 3)],
    "conv1x1": [(12, 1, 1)],
    "depthwise": [(1, 3, 3)],
    "grouped": [(4, 3, 3)],
    "coupled": [(6, 1, 1), (10, 1, 1)],
}

seeds = st.integers(min_value=0, max_value=2**31 - 1)
kinds = st.sampled_from(sorted(SHAPES))
criteria = st.sampled_from(PAPER_CRITERIA)
greedy = st.sampled_from(["min_sum", "min_min"])


def random_group(seed: int, kind: str, n: int, dtype: torch.dtype = torch.float64) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn((n, *shape), generator=gen, dtype=dtype) for shape in SHAPES[kind]]


# ----------------------------------------------------------------------------------------------------------------
# Redundancy
# ----------------------------------------------------------------------------------------------------------------


@PROPERTY
@given(seed=seeds, kind=kinds, criterion=criteria, strategy=greedy, n=st.integers(3, 24), data=st.data())
def test_duplicate_filter_is_pruned_first(seed, kind, criterion, strategy, n, data) -> None:
    i = data.draw(st.integers(0, n - 1), label="original")
    j = data.draw(st.integers(0, n - 1).filter(lambda k: k != i), label="copy")
    weights = random_group(seed, kind, n)
    for w in weights:
        w[j] = w[i]
    sal = group_saliency(weights, criterion, strategy)
    # The duplicate pair is the most redundant pair, so one of them is removed at step 0.
    assert int(sal.argmin()) in (i, j)
    if criterion != "SNR_dis":
        # Symmetric metrics: the two totals (or minima) tie exactly, and a tie removes the row index of the
        # first arg-min in row-major order, i.e. the lower index of the pair. (SNR is not symmetric: its row
        # and column totals differ, so either copy may go.)
        assert sal[min(i, j)] == 0


@PROPERTY
@given(seed=seeds, kind=kinds, criterion=criteria, strategy=st.sampled_from(STRATEGIES), n=st.integers(2, 24))
def test_permuting_filters_permutes_saliency(seed, kind, criterion, strategy, n) -> None:
    weights = random_group(seed, kind, n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))
    sal = group_saliency(weights, criterion, strategy)
    permuted = group_saliency([w[perm] for w in weights], criterion, strategy)
    expected = sal[perm]
    if strategy == "sum":
        torch.testing.assert_close(permuted, expected, rtol=1e-10, atol=1e-12)
        return
    # The greedy's last step always ties (two survivors, empty totals) and removes the lower index, so the
    # order of the final two is positional by design; every earlier removal follows the filters.
    early = expected < n - 2
    assert permuted[early].tolist() == expected[early].tolist()
    assert sorted(permuted[~early].tolist()) == sorted(expected[~early].tolist()) == [n - 2, n - 1]


@PROPERTY
@given(
    seed=seeds,
    kind=kinds,
    strategy=st.sampled_from(STRATEGIES),
    factor=st.floats(0.01, 100.0),
    negative=st.booleans(),
    n=st.integers(2, 24),
)
def test_scaling_a_filter_changes_nothing_for_cosine(seed, kind, strategy, factor, negative, n) -> None:
    weights = random_group(seed, kind, n)
    scaled = [w.clone() for w in weights]
    which = torch.arange(n) % 3 == 0
    for w in scaled:
        w[which] *= -factor if negative else factor
    before = group_saliency(weights, "cosine_sim", strategy)
    after = group_saliency(scaled, "cosine_sim", strategy)
    torch.testing.assert_close(after, before, rtol=1e-10, atol=1e-12)


@PROPERTY
@given(seed=seeds, kind=kinds, criterion=criteria, strategy=greedy, n=st.integers(2, 24))
def test_sign_normalisation_makes_every_metric_ignore_filter_negation(seed, kind, criterion, strategy, n) -> None:
    weights = random_group(seed, kind, n)
    flipped = [torch.where((torch.arange(n) % 2 == 1).view(-1, *[1] * (w.dim() - 1)), -w, w) for w in weights]
    assert group_saliency(flipped, criterion, strategy).tolist() == group_saliency(weights, criterion, strategy).tolist()


# ----------------------------------------------------------------------------------------------------------------
# Exact greedy tie-breaks
# ----------------------------------------------------------------------------------------------------------------


@PROPERTY
@given(
    n=st.integers(2, 12),
    seed=seeds,
    levels=st.integers(1, 4),
    symmetric=st.booleans(),
    distance=st.booleans(),
    strategy=greedy,
)
def test_greedy_tie_breaks_match_the_rescanning_loop(n, seed, levels, symmetric, distance, strategy) -> None:
    # Few distinct integer values: many exact ties in the arg-min, the totals and the minima.
    rng = np.random.default_rng(seed)
    mat = rng.integers(0, levels + 1, size=(n, n)).astype(np.float64)
    if symmetric:
        mat = np.triu(mat) + np.triu(mat, 1).T
    mat = torch.from_numpy(mat)
    assert saliency_from_matrix(mat, distance, strategy).tolist() == ref_greedy(mat, distance, strategy)


# ----------------------------------------------------------------------------------------------------------------
# Degenerate modes, n_keep, errors
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("criterion", ["VBD_dis", "Pearson_sim", "SNR_dis", "Euclide_dis", "cosine_sim"])
@pytest.mark.parametrize("shape", [(32, 16, 1, 1), (32, 1, 3, 3)], ids=["1x1", "depthwise"])
def test_degenerate_modes_give_no_nan(shape, criterion) -> None:
    w = torch.randn(shape)
    summaries = rank.filter_summaries(w)
    assert all(s.shape[1] > 1 for s in summaries)
    mat = pairwise_matrix([summaries], criterion)
    assert torch.isfinite(mat).all()
    sal = filter_saliency(w, criterion)
    assert sorted(sal.tolist()) == list(range(32))
    # The paper's code gets NaN here and keeps the last filters by index; we rank on the informative modes.
    assert sal.tolist() != list(range(32))


@pytest.mark.parametrize("criterion", ["VBD_dis", "Pearson_sim", "SNR_dis"])
def test_constant_summaries_give_no_nan(criterion) -> None:
    # Spatially constant depthwise filters: every spatial summary is the constant vector (1, 1, 1)/sqrt(3).
    w = torch.linspace(0.5, 2.0, 8).view(8, 1, 1, 1) * torch.ones(8, 1, 3, 3)
    w[5] = torch.randn(1, 3, 3)
    mat = pairwise_matrix([rank.filter_summaries(w)], criterion)
    assert torch.isfinite(mat).all()
    sal = filter_saliency(w, criterion)
    assert sorted(sal.tolist()) == list(range(8))
    # The identical constant filters go first; the only informative one is among the last two (the last
    # step's tie is settled by index).
    assert sal[5] >= 6


@PROPERTY
@given(seed=seeds, n=st.integers(1, 40))
def test_keeping_every_filter_skips_ranking(seed, n) -> None:
    w = torch.randn(n, 3, 3, 3, generator=torch.Generator().manual_seed(seed))
    w[0, 0, 0, 0] = float("nan")  # ranking would refuse this weight: proves nothing was ranked
    assert select_filters(w, n).tolist() == list(range(n))


@pytest.mark.parametrize("criterion", PAPER_CRITERIA + BASELINE_CRITERIA)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_or_inf_weight_is_an_error_naming_the_layer(bad, criterion) -> None:
    w = torch.randn(8, 4, 3, 3)
    w[3, 1, 2, 0] = bad
    with pytest.raises(ValueError, match=r"layer 'features\.conv3' has NaN/Inf weights; cannot rank its filters"):
        filter_saliency(w, criterion, name="features.conv3")
    with pytest.raises(ValueError, match=r"layer 'layer2' has NaN/Inf weights \(weight 2 of 2\)"):
        group_saliency([torch.randn(8, 4, 1, 1), w], criterion, name="layer2")


def test_unknown_criterion_error_lists_valid_names() -> None:
    with pytest.raises(ValueError) as err:
        filter_saliency(torch.randn(4, 3, 3, 3), "hamming")
    message = str(err.value)
    assert "'hamming'" in message and "\n" not in message
    assert all(name in message for name in CRITERIA)


def test_unknown_strategy_error_lists_valid_names() -> None:
    with pytest.raises(ValueError) as err:
        filter_saliency(torch.randn(4, 3, 3, 3), "VBD_dis", "max_sum")
    message = str(err.value)
    assert "'max_sum'" in message and "\n" not in message
    assert all(name in message for name in STRATEGIES)


def test_aliases_and_case_variants_map_to_the_paper_names() -> None:
    for alias, paper in [("cosine", "cosine_sim"), ("euclidean", "Euclide_dis"), ("vbd", "VBD_dis"),
                         ("manhattan", "Manhattan_dis"), ("pearson", "Pearson_sim"), ("snr", "SNR_dis"),
                         ("VBD_DIS", "VBD_dis"), ("euclide_dis", "Euclide_dis"), ("L1", "l1")]:
        assert canonical_criterion(alias) == paper
    assert canonical_strategy("MIN_SUM") == "min_sum"
    w = torch.randn(16, 4, 3, 3)
    assert torch.equal(filter_saliency(w, "vbd"), filter_saliency(w, "VBD_dis"))
