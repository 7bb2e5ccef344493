"""The batched ranking engine (coring.rank) against a readable per-filter, per-pair reference.

The reference here is written the way the paper's code works: tensorly unfolding + SVD one filter at a time, a
Python double loop calling the metric per pair, and a greedy loop that rescans the whole matrix every step.
The fast path must give the same summaries (up to the canonical sign), the same matrices, and the same
saliency / kept sets on random layers of every kind (3x3, 1x1, depthwise, grouped, coupled convs).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import tensorly as tl
import torch
from tensorly.base import unfold

from coring import rank
from coring.rank import (
    PAPER_CRITERIA,
    STRATEGIES,
    filter_summaries,
    group_saliency,
    pairwise_matrix,
    rank_groups,
    saliency_from_matrices,
    saliency_from_matrix,
    select_filters,
    select_from_saliency,
)

# ----------------------------------------------------------------------------------------------------------------
# Reference implementation (readable, slow)
# ----------------------------------------------------------------------------------------------------------------

CONST_TOL = 1e-12  # same definition of a "constant" vector as coring.rank documents


def ref_canonical_sign(u: torch.Tensor) -> torch.Tensor:
    """Entry of largest |value| made positive (first such on ties)."""
    k = int(np.argmax(np.abs(u.numpy())))
    return -u if u[k] < 0 else u


def ref_filter_summaries(weight: torch.Tensor) -> list[torch.Tensor]:
    """Per filter, per mode: tensorly unfolding, full SVD, first left singular vector, canonical sign."""
    w = weight.detach().to(torch.float64)
    modes = [m for m, length in enumerate(w.shape[1:]) if length > 1]
    per_mode: dict[int, list[torch.Tensor]] = {m: [] for m in modes}
    with tl.backend_context("numpy"):
        for i in range(w.shape[0]):
            filt = w[i].numpy()
            for m in modes:
                mat = torch.from_numpy(np.ascontiguousarray(unfold(filt, m)))
                if not bool(mat.any()):
                    u = torch.zeros(mat.shape[0], dtype=torch.float64)
                    u[0] = 1.0  # documented choice for an all-zero unfolding
                else:
                    u = torch.linalg.svd(mat, full_matrices=False).U[:, 0]
                per_mode[m].append(ref_canonical_sign(u))
    return [torch.stack(per_mode[m]) for m in modes]


def ref_is_constant(a: torch.Tensor) -> bool:
    return float(torch.linalg.vector_norm(a - a.mean())) <= CONST_TOL * float(torch.linalg.vector_norm(a))


def ref_metric(a: torch.Tensor, b: torch.Tensor, criterion: str) -> float:
    """One metric value for one pair of vectors (docs/design.md, "Pairwise matrix", plus the documented 0/0 rules)."""
    if criterion == "cosine_sim":
        na, nb = float(a.norm()), float(b.norm())
        if na == 0 and nb == 0:
            return 1.0
        if na == 0 or nb == 0:
            return 0.0
        return abs(float(torch.dot(a, b))) / (na * nb)
    if criterion == "Euclide_dis":
        return float(torch.dist(a, b))
    if criterion == "Manhattan_dis":
        return float((a - b).abs().sum())
    const_a, const_b = ref_is_constant(a), ref_is_constant(b)
    if criterion == "Pearson_sim":
        if const_a and const_b:
            return 1.0
        if const_a or const_b:
            return 0.0
        ac, bc = a - a.mean(), b - b.mean()
        return float(torch.dot(ac, bc) / (ac.norm() * bc.norm()))
    var_a = 0.0 if const_a else float(torch.var(a))
    var_b = 0.0 if const_b else float(torch.var(b))
    var_diff = float(torch.var(a - b))
    if criterion == "VBD_dis":
        return 0.0 if const_a and const_b else var_diff / (var_a + var_b)
    if criterion == "SNR_dis":
        if const_a:
            return 0.0 if const_b else 1.0
        return var_diff / var_a
    raise AssertionError(criterion)


def ref_pairwise_matrix(summaries_per_conv: list[list[torch.Tensor]], criterion: str) -> torch.Tensor:
    """Python double loop over pairs; mean over every (conv, informative mode).

    Symmetric metrics are evaluated once per unordered pair and mirrored: BLAS may round a.b and b.a
    differently (alignment-dependent kernels), and the greedy tie-break rules assume S_ij == S_ji exactly.
    """
    vectors = [s for conv in summaries_per_conv for s in conv]
    n = vectors[0].shape[0]
    symmetric = criterion != "SNR_dis"
    mat = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(i if symmetric else 0, n):
            mat[i, j] = sum(ref_metric(s[i], s[j], criterion) for s in vectors) / len(vectors)
            if symmetric:
                mat[j, i] = mat[i, j]
    return mat


def ref_greedy(mat: torch.Tensor, distance: bool, strategy: str) -> list[int]:
    """The paper's greedy loop (docs/design.md, "Greedy strategies"), literally: rescan the whole matrix for its first arg-min/arg-max every step."""
    s = mat.detach().to(torch.float64).cpu().numpy().copy()
    n = s.shape[0]
    inf = np.inf if distance else -np.inf
    np.fill_diagonal(s, inf)
    saliency = [n - 1] * n
    for step in range(n - 1):
        flat = int(np.argmin(s)) if distance else int(np.argmax(s))
        r, c = divmod(flat, n)
        s[r, c] = s[c, r] = inf
        row, col = s[r, :], s[:, c]
        if strategy == "min_min":
            if distance:
                victim = c if row.min() > col.min() else r
            else:
                victim = c if row.max() < col.max() else r
        else:
            total_r, total_c = row[row != inf].sum(), col[col != inf].sum()
            if distance:
                victim = c if total_r > total_c else r
            else:
                victim = c if total_r < total_c else r
        saliency[victim] = step
        s[victim, :] = inf
        s[:, victim] = inf
    return saliency


def ref_saliency(mat: torch.Tensor, distance: bool, strategy: str) -> torch.Tensor:
    if strategy == "sum":
        return (1.0 if distance else -1.0) * mat.to(torch.float64).sum(dim=1)
    return torch.tensor(ref_greedy(mat, distance, strategy), dtype=torch.float64)


def ref_kept(saliency: torch.Tensor, n_keep: int) -> list[int]:
    order = np.argsort(saliency.numpy(), kind="stable")
    return sorted(int(i) for i in order[len(order) - n_keep :])


# ----------------------------------------------------------------------------------------------------------------
# Random layers
# ----------------------------------------------------------------------------------------------------------------

LAYERS = {
    "conv3x3": [(24, 8, 3, 3)],
    "conv1x1": [(20, 16, 1, 1)],
    "depthwise": [(16, 1, 3, 3)],
    "grouped": [(24, 4, 3, 3)],  # e.g. Conv2d(16, 24, 3, groups=4): Cin/groups = 4
    "first_conv": [(12, 3, 3, 3)],  # Cin < k*k: the other side of the Gram switch
    "coupled": [(16, 8, 1, 1), (16, 12, 1, 1), (16, 6, 3, 3)],  # a residual stage: conv3s + downsample
    "conv1d": [(14, 6, 5)],  # other orders take the generic unfolding path
    "conv3d": [(10, 3, 3, 2, 3)],
}


@functools.lru_cache(maxsize=None)
def layer(kind: str) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(sum(map(ord, kind)))
    return tuple(torch.randn(shape, generator=gen, dtype=torch.float64) for shape in LAYERS[kind])


@functools.lru_cache(maxsize=None)
def ref_summaries_of(kind: str) -> tuple[tuple[torch.Tensor, ...], ...]:
    return tuple(tuple(ref_filter_summaries(w)) for w in layer(kind))


@functools.lru_cache(maxsize=None)
def ref_matrix_of(kind: str, criterion: str) -> torch.Tensor:
    return ref_pairwise_matrix([list(s) for s in ref_summaries_of(kind)], criterion)


# ----------------------------------------------------------------------------------------------------------------
# Fast path == reference
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", LAYERS)
def test_batched_hosvd_matches_per_filter_svd_up_to_sign(kind: str) -> None:
    for weight, ref in zip(layer(kind), ref_summaries_of(kind)):
        fast = filter_summaries(weight)
        assert [tuple(s.shape) for s in fast] == [tuple(s.shape) for s in ref]
        for f, r in zip(fast, ref):
            # identical after canonical sign, hence also up to sign
            torch.testing.assert_close(f, r, rtol=0, atol=1e-10)
            assert torch.allclose(f.norm(dim=1), torch.ones(f.shape[0], dtype=torch.float64))


def test_degenerate_modes_are_left_out_of_the_summaries() -> None:
    assert [tuple(s.shape) for s in filter_summaries(torch.randn(5, 7, 1, 1))] == [(5, 7)]
    assert [tuple(s.shape) for s in filter_summaries(torch.randn(5, 1, 3, 3))] == [(5, 3), (5, 3)]
    assert [tuple(s.shape) for s in filter_summaries(torch.randn(5, 4, 3, 1))] == [(5, 4), (5, 3)]
    assert [tuple(s.shape) for s in filter_summaries(torch.randn(5, 4, 5, 3))] == [(5, 4), (5, 5), (5, 3)]


@pytest.mark.parametrize("criterion", PAPER_CRITERIA)
@pytest.mark.parametrize("kind", LAYERS)
def test_batched_matrix_matches_pairwise_loop(kind: str, criterion: str) -> None:
    fast = pairwise_matrix([filter_summaries(w) for w in layer(kind)], criterion)
    assert fast.dtype == torch.float64
    torch.testing.assert_close(fast, ref_matrix_of(kind, criterion), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("criterion", PAPER_CRITERIA)
@pytest.mark.parametrize("kind", LAYERS)
def test_fast_saliency_and_kept_sets_match_reference(kind: str, criterion: str, strategy: str) -> None:
    distance = "dis" in criterion
    ref = ref_saliency(ref_matrix_of(kind, criterion), distance, strategy)
    fast = group_saliency(list(layer(kind)), criterion, strategy)
    if strategy == "sum":
        torch.testing.assert_close(fast, ref, rtol=1e-9, atol=1e-9)
    else:
        assert fast.tolist() == ref.tolist()
    n = fast.shape[0]
    for n_keep in (1, n // 4, n // 2, n - 1):
        assert select_from_saliency(fast, n_keep).tolist() == ref_kept(ref, n_keep)


@pytest.mark.parametrize("strategy", ["min_sum", "min_min"])
@pytest.mark.parametrize("distance", [True, False])
def test_fast_greedy_matches_rescanning_loop_on_random_asymmetric_matrices(distance: bool, strategy: str) -> None:
    gen = torch.Generator().manual_seed(3)
    for n in (2, 3, 5, 17, 64):
        mat = torch.rand(n, n, generator=gen, dtype=torch.float64)
        assert saliency_from_matrix(mat, distance, strategy).tolist() == ref_greedy(mat, distance, strategy)


def test_greedy_batch_equals_one_matrix_at_a_time() -> None:
    gen = torch.Generator().manual_seed(4)
    mats = torch.rand(5, 33, 33, generator=gen, dtype=torch.float64)
    mats[2] = torch.randint(0, 3, (33, 33), generator=gen).double()  # heavy ties in one member of the batch
    for strategy in STRATEGIES:
        batched = saliency_from_matrices(mats, True, strategy)
        for b in range(5):
            assert batched[b].tolist() == saliency_from_matrix(mats[b], True, strategy).tolist()


# ----------------------------------------------------------------------------------------------------------------
# Public behaviour
# ----------------------------------------------------------------------------------------------------------------


def test_greedy_saliency_is_the_removal_order() -> None:
    sal = rank.filter_saliency(torch.randn(40, 8, 3, 3))
    assert sorted(sal.tolist()) == list(range(40))


def test_greedy_removes_the_most_redundant_pair_first_by_the_victim_rule() -> None:
    # distances: pair (1, 3) is the closest; filter 3 is closer to the rest (smaller total) so it goes first.
    mat = torch.tensor(
        [
            [0.0, 5.0, 6.0, 4.0],
            [5.0, 0.0, 7.0, 1.0],
            [6.0, 7.0, 0.0, 3.0],
            [4.0, 1.0, 3.0, 0.0],
        ]
    )
    assert saliency_from_matrix(mat, True, "min_sum").tolist()[3] == 0
    # same matrix read as similarities: the most similar pair is (1, 2); row 1 has the smaller total (5+1
    # versus 6+3), so filter 2 (larger total similarity) goes first.
    assert saliency_from_matrix(mat, False, "min_sum").tolist()[2] == 0


def test_sum_strategy_is_signed_row_sum_including_diagonal() -> None:
    mat = torch.tensor([[1.0, 2.0], [3.0, 5.0]])
    assert saliency_from_matrix(mat, True, "sum").tolist() == [3.0, 8.0]
    assert saliency_from_matrix(mat, False, "sum").tolist() == [-3.0, -8.0]


def test_coupled_convs_average_the_matrix_over_all_their_modes() -> None:
    a, b = torch.randn(10, 4, 3, 3, dtype=torch.float64), torch.randn(10, 6, 1, 1, dtype=torch.float64)
    sa, sb = filter_summaries(a), filter_summaries(b)
    per_mode = [pairwise_matrix([[s]], "VBD_dis") for s in sa + sb]
    torch.testing.assert_close(pairwise_matrix([sa, sb], "vbd"), sum(per_mode) / 4)


def test_rank_groups_batches_to_the_same_result_as_one_group_at_a_time() -> None:
    groups = [[torch.randn(16, 8, 3, 3)], [torch.randn(16, 4, 1, 1), torch.randn(16, 8, 1, 1)], [torch.randn(9, 3, 3, 3)]]
    names = ["a", "b", "c"]
    for criterion in ("VBD_dis", "cosine_sim", "l2", "random"):
        together = rank_groups(groups, criterion, "min_sum", seed=1, names=names)
        for g, name, sal in zip(groups, names, together):
            assert torch.equal(sal, group_saliency(g, criterion, "min_sum", seed=1, name=name))


def test_float32_and_float64_weights_rank_identically() -> None:
    w = torch.randn(32, 16, 3, 3)
    for criterion in ("VBD_dis", "Euclide_dis", "cosine_sim"):
        assert torch.equal(rank.filter_saliency(w, criterion), rank.filter_saliency(w.double(), criterion))


def test_l1_and_l2_baselines_sum_the_filter_norms_of_coupled_convs() -> None:
    a, b = torch.randn(6, 3, 3, 3, dtype=torch.float64), torch.randn(6, 5, 1, 1, dtype=torch.float64)
    l1 = group_saliency([a, b], "l1")
    torch.testing.assert_close(l1, a.abs().sum((1, 2, 3)) + b.abs().sum((1, 2, 3)))
    l2 = group_saliency([a, b], "l2")
    torch.testing.assert_close(l2, a.flatten(1).norm(dim=1) + b.flatten(1).norm(dim=1))
    assert select_filters(a, 2, "l1").tolist() == sorted(a.abs().sum((1, 2, 3)).argsort()[-2:].tolist())


def test_random_baseline_is_seeded() -> None:
    w = torch.randn(50, 3, 3, 3)
    first = rank.filter_saliency(w, "random", seed=7)
    assert torch.equal(first, rank.filter_saliency(w, "random", seed=7))
    assert not torch.equal(first, rank.filter_saliency(w, "random", seed=8))
    assert not torch.equal(first, rank.filter_saliency(w, "random", seed=7, name="other.layer"))
    assert ((first >= 0) & (first < 1)).all()


def test_random_baseline_differs_between_unnamed_groups_of_equal_width() -> None:
    a, b = rank_groups([[torch.randn(30, 3, 3, 3)], [torch.randn(30, 3, 3, 3)]], "random")
    assert not torch.equal(a, b)


def test_kept_indices_are_sorted_and_are_the_highest_saliency() -> None:
    sal = torch.tensor([0.5, 3.0, 1.0, 2.0, -1.0])
    assert select_from_saliency(sal, 3).tolist() == [1, 2, 3]
    assert select_from_saliency(sal, 3).dtype == torch.long


def test_equal_saliency_removes_the_lower_index_first() -> None:
    sal = torch.tensor([1.0, 1.0, 0.0, 1.0])
    assert select_from_saliency(sal, 2).tolist() == [1, 3]


@pytest.mark.parametrize("n_keep", [0, -1, 7, 2.0, True])
def test_n_keep_outside_range_is_an_error_naming_it(n_keep) -> None:
    with pytest.raises(ValueError, match=str(n_keep).replace(".", r"\.")):
        select_filters(torch.randn(6, 3, 3, 3), n_keep)


def test_coupled_convs_must_share_their_filter_count() -> None:
    with pytest.raises(ValueError, match="same number of filters"):
        group_saliency([torch.randn(6, 3, 3, 3), torch.randn(7, 3, 3, 3)], name="layer1")


def test_zero_filters_give_finite_summaries_and_ranks() -> None:
    w = torch.randn(12, 6, 3, 3, dtype=torch.float64)
    w[[2, 7]] = 0.0
    for s in filter_summaries(w):
        assert torch.isfinite(s).all()
        assert s[2].tolist() == s[7].tolist() == [1.0] + [0.0] * (s.shape[1] - 1)
    for criterion in PAPER_CRITERIA:
        sal = rank.filter_saliency(w, criterion)
        assert torch.isfinite(sal).all()
        assert sal[[2, 7]].min() == 0  # two identical (dead) filters: one of them goes first


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_weights_rank_on_their_device_like_cpu() -> None:
    w = torch.randn(48, 16, 3, 3)
    for criterion in PAPER_CRITERIA:
        gpu = rank.filter_saliency(w.cuda(), criterion)
        assert gpu.device.type == "cuda"
        assert gpu.cpu().tolist() == rank.filter_saliency(w, criterion).tolist()
    assert select_filters(w.cuda(), 10).device.type == "cuda"
