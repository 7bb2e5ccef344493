"""Step 2: the pairwise matrix of the summaries under one metric (docs/design.md, "Pairwise matrix")."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from coring.rank.names import BASELINE_CRITERIA, DATA_CRITERIA, canonical_criterion
from coring.rank.summaries import _duplicate_map

__all__ = ['pairwise_matrix']


# Gram-based differences (|a-b|^2 = |a|^2+|b|^2-2ab, Var(a-b) = Var a + Var b - 2 Cov) lose relative accuracy
# when a ~ b. Entries whose Gram value is below _REFINE_TOL times its scale are recomputed from a - b directly.
_REFINE_TOL = 1e-3
# A vector whose centred norm is <= _CONST_TOL * its norm is treated as constant (variance exactly 0).
_CONST_TOL = 1e-12
# Pairs per chunk (times vector length) for the direct recomputation.
_REFINE_CHUNK = 1 << 22


def _direct_pairs(u: Tensor, mask: Tensor, fn) -> tuple[Tensor, Tensor, Tensor]:
    """Evaluate ``fn(u[i] - u[j])`` (a row-wise reduction) for the off-diagonal pairs where ``mask`` is True."""
    ii, jj = torch.nonzero(mask, as_tuple=True)
    off = ii != jj  # the diagonal is set exactly by the caller
    ii, jj = ii[off], jj[off]
    out = torch.empty(ii.shape[0], dtype=u.dtype, device=u.device)
    step = max(1, _REFINE_CHUNK // max(1, u.shape[1]))
    for start in range(0, ii.shape[0], step):
        sl = slice(start, start + step)
        out[sl] = fn(u[ii[sl]] - u[jj[sl]])
    return ii, jj, out


def _symmetric_gram(u: Tensor, scale: float = 1.0) -> Tensor:
    """``scale * u u^T``, made exactly symmetric (BLAS may round ``g_ij`` and ``g_ji`` differently)."""
    gram = u @ u.T
    return gram.add_(gram.T.contiguous()).mul_(0.5 * scale)


def _metric_matrix(u: Tensor, crit: str) -> Tensor:
    """``S_ij = metric(u[i], u[j])`` for one ``[n, d]`` block of summaries; see :func:`pairwise_matrix`.

    Works in place on ``n x n`` buffers where it can: this runs on matrices of up to ~1024^2 per mode.
    """
    n, d = u.shape
    norms = torch.linalg.vector_norm(u, dim=1)
    tiny = torch.finfo(u.dtype).tiny

    if crit == "Manhattan_dis":
        s = torch.cdist(u.unsqueeze(0), u.unsqueeze(0), p=1.0).squeeze(0)
        s = s.add_(s.T.contiguous()).mul_(0.5)
        return s.fill_diagonal_(0.0)

    if crit == "cosine_sim":
        inv = torch.where(norms > 0, 1.0 / norms.clamp_min(tiny), 0.0)
        s = _symmetric_gram(u).abs_().mul_(torch.outer(inv, inv))  # 0 against a zero vector; outer(): symmetric
        zero = norms == 0
        if bool(zero.any()):
            s[zero[:, None] & zero[None, :]] = 1.0
        return s.fill_diagonal_(1.0)

    if crit == "Euclide_dis":
        sqn = norms**2
        scale = sqn[:, None] + sqn[None, :]
        sq = _symmetric_gram(u, -2.0).add_(scale).clamp_min_(0.0)
        refine = sq <= scale.mul_(_REFINE_TOL)
        s = sq.sqrt_()
        ii, jj, direct = _direct_pairs(u, refine, lambda diff: torch.linalg.vector_norm(diff, dim=1))
        s[ii, jj] = direct
        return s.fill_diagonal_(0.0)

    # Variance-based metrics: centre, zero out constant vectors exactly.
    centred = u - u.mean(dim=1, keepdim=True)
    cnorm = torch.linalg.vector_norm(centred, dim=1)
    const = cnorm <= _CONST_TOL * norms
    any_const = bool(const.any())
    if any_const:
        centred[const] = 0.0
        cnorm[const] = 0.0
    ddof = max(d - 1, 1)

    if crit == "Pearson_sim":
        inv = torch.where(cnorm > 0, 1.0 / cnorm.clamp_min(tiny), 0.0)
        s = _symmetric_gram(centred).mul_(torch.outer(inv, inv))  # 0 against a constant vector
        if any_const:
            s[const[:, None] & const[None, :]] = 1.0
        return s.fill_diagonal_(1.0)

    var = cnorm**2 / ddof
    var_sum = var[:, None] + var[None, :]
    num = _symmetric_gram(centred, -2.0 / ddof).add_(var_sum).clamp_min_(0.0)  # Var(a - b)

    def direct_var(diff: Tensor) -> Tensor:  # unbiased Var of each row
        diff = diff - diff.mean(dim=1, keepdim=True)
        return diff.square_().sum(dim=1).div_(ddof)

    ii, jj, direct = _direct_pairs(centred, num <= _REFINE_TOL * var_sum, direct_var)
    num[ii, jj] = direct
    if crit == "VBD_dis":
        s = num.div_(var_sum.clamp_min_(tiny))  # both constant: num is exactly 0, so 0
    elif crit == "SNR_dis":
        s = num.div_(var.clamp_min(tiny)[:, None])
        if any_const:  # constant signal: VBD denominator (gives 1), or 0 when both are constant
            fill = torch.where(const, 0.0, 1.0).to(s.dtype)
            s[const] = fill.expand(int(const.sum()), n)
    else:  # pragma: no cover - guarded by the callers
        raise ValueError(f"criterion {crit!r} is not a pairwise metric")
    return s.fill_diagonal_(0.0)


def pairwise_matrix(
    summaries_per_conv: Sequence[Sequence[Tensor]] | Sequence[Tensor],
    criterion: str,
    *,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """The ``N x N`` redundancy matrix ``S_ij = mean over (conv, informative mode) of metric(u_i, u_j)``.

    ``summaries_per_conv[k]`` is :func:`filter_summaries` of conv ``k`` (a flat list of ``[N, d]`` tensors is
    taken as one conv). Several convs that share their output channels (the convs of a residual stage) give
    ONE matrix averaged over all their (conv, mode) pairs, each weighing the same, so a conv with three
    informative modes counts three times as much as a 1x1 conv with one; the greedy strategy then runs once.

    Metrics (docs/design.md, "Pairwise matrix"), for rows ``a = u_i``, ``b = u_j``:

    - ``cosine_sim``: ``|a.b| / (|a| |b|)``;
    - ``Euclide_dis``: ``|a - b|_2``;  ``Manhattan_dis``: ``|a - b|_1``;
    - ``VBD_dis``: ``Var(a - b) / (Var a + Var b)``, unbiased variances;
    - ``Pearson_sim``: signed Pearson correlation;
    - ``SNR_dis``: ``Var(a - b) / Var(a)`` (not symmetric: row ``i`` is the signal).

    Degenerate inputs never give NaN. A vector is *constant* when its centred norm is at most 1e-12 times its
    norm (zero vectors included); its variance is then exactly 0. Two degenerate vectors (both zero for cosine,
    both constant for the variance metrics) count as identical: cosine 1, Pearson 1, VBD 0, SNR 0. One
    degenerate vector against a regular one counts as unrelated: cosine 0, Pearson 0; VBD is then well defined
    (it gives 1); SNR with a constant signal ``a`` falls back to the VBD denominator, which gives 1. The
    diagonal is set exactly (0 for distances, 1 for similarities).

    Computed with Gram matrices in ``dtype`` (float64 by default) on the summaries' device; entries where the
    Gram form of a difference cancels (``|a-b|^2`` or ``Var(a-b)`` below 1e-3 of its scale) are recomputed from
    ``a - b`` directly, so near-duplicates keep full relative accuracy. Bitwise-identical filters give
    bitwise-identical rows and columns (exact ties, so the greedy tie-break rules apply to them); symmetric
    metrics give an exactly symmetric matrix. Summaries of length 1 are ignored (docs/design.md, "Degenerate modes"); when no
    summary is longer than 1 (a ``[N, 1, 1, 1]`` weight) the matrix is all zeros: every pair is equally
    redundant and the greedy loop removes filters in index order.
    """
    crit = canonical_criterion(criterion)
    if crit in BASELINE_CRITERIA + DATA_CRITERIA:
        raise ValueError(f"criterion {crit!r} is a baseline, it has no pairwise matrix")
    if len(summaries_per_conv) and isinstance(summaries_per_conv[0], Tensor):
        summaries_per_conv = [summaries_per_conv]  # type: ignore[list-item]
    blocks = [s.to(dtype) for conv in summaries_per_conv for s in conv]  # type: ignore[union-attr]
    if not blocks:
        raise ValueError("pairwise_matrix needs at least one summary tensor")
    n = blocks[0].shape[0]
    if any(b.dim() != 2 or b.shape[0] != n for b in blocks):
        raise ValueError(f"all summaries must be [N, d] with the same N; got {[tuple(b.shape) for b in blocks]}")
    informative = [b for b in blocks if b.shape[1] > 1]
    device = blocks[0].device
    if not informative:
        # No mode carries information (e.g. a [N, 1, 1, 1] weight): every pair is equally redundant.
        return torch.zeros(n, n, dtype=dtype, device=device)
    dups = _duplicate_map(torch.cat(informative, dim=1))
    if dups is not None:
        informative = [b[dups[0]] for b in informative]
    total = torch.zeros(informative[0].shape[0], informative[0].shape[0], dtype=dtype, device=device)
    for block in informative:
        total += _metric_matrix(block, crit)
    total /= len(informative)
    if dups is not None:
        total = total[dups[1]][:, dups[1]]
    if not bool(torch.isfinite(total).all()):  # pragma: no cover - defensive, inputs are finite
        raise FloatingPointError("pairwise matrix has non-finite entries")
    return total
