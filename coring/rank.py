"""CORING filter ranking: HOSVD summaries, pairwise redundancy matrix, greedy strategies.

The pipeline for one layer (or several coupled layers that share output channels):

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

Everything is computed on the weight's device in float64 (the greedy loop itself runs on the host: it is a
sequential loop of O(N) steps over an ``N x N`` matrix, which a GPU cannot speed up); saliencies are returned
on the weight's device as float64 tensors, higher = keep.
"""

from __future__ import annotations

import hashlib
import numbers
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "BASELINE_CRITERIA",
    "CRITERIA",
    "CRITERION_ALIASES",
    "DATA_CRITERIA",
    "PAPER_CRITERIA",
    "STRATEGIES",
    "canonical_criterion",
    "canonical_strategy",
    "combine_scores",
    "filter_saliency",
    "filter_summaries",
    "fpgm_scores",
    "group_saliency",
    "is_data_driven",
    "is_distance",
    "pairwise_matrix",
    "rank_groups",
    "saliency_from_matrices",
    "saliency_from_matrix",
    "select_filters",
    "select_from_saliency",
]

# --------------------------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------------------------

#: The paper's criterion names (upstream ``similarity.py``); "dis" in the name means a distance.
PAPER_CRITERIA: tuple[str, ...] = (
    "cosine_sim",
    "Euclide_dis",
    "VBD_dis",
    "Manhattan_dis",
    "Pearson_sim",
    "SNR_dis",
)
#: Plain aliases of the paper's names.
CRITERION_ALIASES: dict[str, str] = {
    "cosine": "cosine_sim",
    "euclidean": "Euclide_dis",
    "vbd": "VBD_dis",
    "manhattan": "Manhattan_dis",
    "pearson": "Pearson_sim",
    "snr": "SNR_dis",
}
#: Weight-only criteria run through the same pipeline: filter L1 norm, L2 norm, seeded uniform noise, and FPGM
#: (sum of Euclidean distances to the layer's other filters; filters near the geometric median go first).
BASELINE_CRITERIA: tuple[str, ...] = ("l1", "l2", "random", "fpgm")
#: Data-driven criteria, scored from feature maps of a few training batches (``coring.feature_criteria``):
#: HRank (average feature-map rank), CHIP (channel independence), first-order Taylor (|activation x gradient|).
DATA_CRITERIA: tuple[str, ...] = ("hrank", "chip", "taylor")
#: Every accepted criterion name.
CRITERIA: tuple[str, ...] = PAPER_CRITERIA + tuple(CRITERION_ALIASES) + BASELINE_CRITERIA + DATA_CRITERIA
#: Every accepted strategy name.
STRATEGIES: tuple[str, ...] = ("min_sum", "min_min", "sum")

_CRITERION_LOOKUP: dict[str, str] = {
    **{name.lower(): name for name in PAPER_CRITERIA},
    **CRITERION_ALIASES,
    **{name: name for name in BASELINE_CRITERIA + DATA_CRITERIA},
}


def canonical_criterion(name: str) -> str:
    """Return the canonical criterion name (the paper's spelling, or a name of ``BASELINE_CRITERIA``/``DATA_CRITERIA``).

    Matching is case-insensitive, so ``"vbd_dis"``, ``"VBD"`` and ``"vbd"`` all give ``"VBD_dis"``.
    Raises ValueError with a one-line message listing the valid names.
    """
    key = name.strip().lower() if isinstance(name, str) else None
    if key is None or key not in _CRITERION_LOOKUP:
        raise ValueError(f"unknown criterion {name!r}; valid criteria: {', '.join(CRITERIA)}")
    return _CRITERION_LOOKUP[key]


def canonical_strategy(name: str) -> str:
    """Return the canonical strategy name (``min_sum``, ``min_min`` or ``sum``), case-insensitively.

    Raises ValueError with a one-line message listing the valid names.
    """
    key = name.strip().lower().replace("-", "_") if isinstance(name, str) else None
    if key not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; valid strategies: {', '.join(STRATEGIES)}")
    return key


def is_distance(criterion: str) -> bool:
    """True when a (canonical or alias) CORING criterion is a distance (the paper's ``"dis" in name`` test)."""
    crit = canonical_criterion(criterion)
    if crit in BASELINE_CRITERIA + DATA_CRITERIA:
        raise ValueError(f"criterion {crit!r} is a baseline, not a pairwise metric")
    return "dis" in crit


def is_data_driven(criterion: str) -> bool:
    """True for the criteria scored from feature maps of training images (``hrank``, ``chip``, ``taylor``)."""
    return canonical_criterion(criterion) in DATA_CRITERIA


# --------------------------------------------------------------------------------------------------------------
# Step 1: HOSVD summaries
# --------------------------------------------------------------------------------------------------------------

def _duplicate_map(rows: Tensor) -> tuple[Tensor, Tensor] | None:
    """Find bitwise-identical rows of a 2-D tensor.

    Returns ``None`` when all rows differ, else ``(representatives, inverse)`` with ``rows[representatives]``
    the distinct rows and ``rows[i] == rows[representatives][inverse[i]]``. The wrapped integer sum of each
    row's bit patterns screens the common no-duplicate case cheaply (integer sums are exact in any order, so
    identical rows always get equal keys); only when keys collide is the exact ``torch.unique`` run.
    """
    n = rows.shape[0]
    if n < 2:
        return None
    flat = rows.reshape(n, -1)
    if flat.dtype != torch.float64:
        flat = flat.to(torch.float64)
    keys = flat.contiguous().view(torch.int64).sum(dim=1)
    if torch.unique(keys).numel() == n:
        return None
    uniq, inverse = torch.unique(flat, dim=0, return_inverse=True)
    if uniq.shape[0] == n:
        return None
    first = torch.full((uniq.shape[0],), n, dtype=torch.long, device=flat.device)
    first.scatter_reduce_(0, inverse, torch.arange(n, device=flat.device), reduce="amin")
    return first, inverse


def _top_eigenvectors(gram: Tensor) -> Tensor:
    """Eigenvector of the largest eigenvalue of each symmetric matrix of a batch ``[n, d, d]`` -> ``[n, d]``."""
    return torch.linalg.eigh(gram).eigenvectors[:, :, -1]


def _from_right_side(a: Tensor, v: Tensor) -> Tensor:
    """Left singular vector ``u = a v / |a v|`` from the right one (``a``: ``[n, d, r]``, ``v``: ``[n, r]``)."""
    u = (a @ v.unsqueeze(-1)).squeeze(-1)
    norm = torch.linalg.vector_norm(u, dim=1, keepdim=True)
    return u / torch.where(norm > 0, norm, torch.ones_like(norm))


def _leading_left_singular_vectors(a: Tensor) -> Tensor:
    """Leading left singular vector of every matrix of a batch ``a`` of shape ``[n, d, r]`` -> ``[n, d]``.

    Uses the eigen-decomposition of the smaller Gram matrix: ``a a^T`` (d x d) when ``d <= r``, else
    ``a^T a`` (r x r) followed by ``u = a v / |a v|``.
    """
    if a.shape[1] <= a.shape[2]:
        return _top_eigenvectors(a @ a.transpose(1, 2))
    return _from_right_side(a, _top_eigenvectors(a.transpose(1, 2) @ a))


def _conv_mode_vectors(w: Tensor) -> list[Tensor]:
    """Leading left singular vectors of the three mode unfoldings of ``[n, C, kh, kw]`` filters, modes > 1 only.

    All three Gram matrices come from one batched product: with ``A = w.reshape(n, C, kh*kw)`` (the mode-0
    unfolding) and ``M = A^T A`` (``[n, kh*kw, kh*kw]``, ``M[(a,x),(b,y)] = sum_c w[c,a,x] w[c,b,y]``), the
    mode-1 Gram is ``sum_x M[(a,x),(b,x)]`` and the mode-2 Gram ``sum_a M[(a,x),(a,y)]``; no unfolding is
    copied.
    """
    n, c, kh, kw = w.shape
    a = w.reshape(n, c, kh * kw)
    spatial = a.transpose(1, 2) @ a
    out = []
    if c > 1:
        if c <= kh * kw:
            out.append(_top_eigenvectors(a @ a.transpose(1, 2)))
        else:
            out.append(_from_right_side(a, _top_eigenvectors(spatial)))
    blocks = spatial.view(n, kh, kw, kh, kw)
    if kh > 1:
        out.append(_top_eigenvectors(blocks.diagonal(dim1=2, dim2=4).sum(-1)))
    if kw > 1:
        out.append(_top_eigenvectors(blocks.diagonal(dim1=1, dim2=3).sum(-1)))
    return out


def _canonical_sign(u: Tensor) -> Tensor:
    """Flip each row so that its entry of largest absolute value (first one on ties) is positive."""
    idx = u.abs().argmax(dim=1, keepdim=True)
    sign = torch.where(torch.gather(u, 1, idx) < 0, -1.0, 1.0).to(u.dtype)
    return u * sign


def filter_summaries(weight: Tensor, *, dtype: torch.dtype = torch.float64) -> list[Tensor]:
    """Rank-(1,1,...) truncated HOSVD of every filter of a layer, batched (no per-filter loop).

    ``weight`` is ``[N, Cin/groups, kh, kw]`` (any order >= 2 works: filter ``i`` is ``weight[i]``). For every
    mode ``m`` of the filter whose length is > 1, the mode-``m`` unfolding of each filter (tensorly's
    convention: mode ``m`` to the front, then reshape to ``(dim_m, -1)``) gives its leading left singular
    vector, sign-normalised (entry of largest ``|value|`` positive, the first such on ties). Modes of length
    1 carry no information and are left out: a 1x1 conv keeps only mode 0 (length Cin), a depthwise conv only
    modes 1 and 2 (kh, kw).

    Singular vectors come from ``torch.linalg.eigh`` of the smaller Gram matrix of each unfolding (for conv
    weights all three Grams are read off one batched product, see ``_conv_mode_vectors``). An all-zero filter
    (a dead filter) has arbitrary singular vectors: it gets ``e_0`` in every mode. Bitwise-identical filters
    get bitwise-identical summaries (they are decomposed once).

    Returns one ``[N, dim_m]`` tensor per informative mode, in mode order, of ``dtype`` on the weight's device.
    """
    if weight.dim() < 2:
        raise ValueError(f"expected a weight of shape [N, ...] with at least 2 dims, got {tuple(weight.shape)}")
    w = weight.detach().to(dtype)
    dups = _duplicate_map(w)
    if dups is not None:
        w = w[dups[0]]
    if w.dim() == 4:
        vectors = _conv_mode_vectors(w)
    else:
        vectors = [
            _leading_left_singular_vectors(w.movedim(mode + 1, 1).reshape(w.shape[0], length, -1))
            for mode, length in enumerate(w.shape[1:])
            if length > 1
        ]
    zero = torch.linalg.vector_norm(w.reshape(w.shape[0], -1), dim=1) == 0
    any_zero = bool(zero.any())
    summaries = []
    for u in vectors:
        if any_zero:
            e0 = torch.zeros(u.shape[1], dtype=u.dtype, device=u.device)
            e0[0] = 1
            u = torch.where(zero[:, None], e0, u)
        u = _canonical_sign(u)
        if dups is not None:
            u = u[dups[1]]
        summaries.append(u.contiguous())
    return summaries


# --------------------------------------------------------------------------------------------------------------
# Step 2: pairwise matrix
# --------------------------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------------------------
# Step 3: strategies
# --------------------------------------------------------------------------------------------------------------


def _greedy_removal_order(dist: np.ndarray, min_min: bool) -> np.ndarray:
    """Greedy removal loop (docs/design.md, "Greedy strategies") on a batch of distance-oriented matrices ``[B, N, N]``.

    Returns the removal step of every filter (``[B, N]``, int64; the last survivor gets ``N - 1``).

    Nothing is written into the matrix: removed filters are tracked by a 0/1 weight vector (for the totals)
    and a 0/inf penalty vector (for the minima), and the pair ``(r, c)`` of the current step is excluded the
    same way. Per-row minima and first arg-minima over the live columns are kept up to date; after a removal
    only the rows whose arg-min was the removed filter are rescanned. Columns are read from a transposed copy
    (the matrix itself when it is symmetric), so every access is a contiguous row.
    """
    b, n, _ = dist.shape
    d = np.ascontiguousarray(dist, dtype=np.float64)
    dt = d if np.array_equal(d, d.transpose(0, 2, 1)) else np.ascontiguousarray(d.transpose(0, 2, 1))
    bi = np.arange(b)
    order = np.full((b, n), n - 1, dtype=np.int64)
    alive = np.ones((b, n), dtype=bool)
    weight = np.ones((b, n))  # 1 for live filters, 0 for removed ones
    penalty = np.zeros((b, n))  # 0 for live filters, inf for removed ones
    masked = d.copy()
    diag = np.arange(n)
    masked[:, diag, diag] = np.inf
    row_arg = masked.argmin(axis=2)
    row_min = np.take_along_axis(masked, row_arg[:, :, None], axis=2)[:, :, 0]
    del masked
    for step in range(n - 1):
        r = row_min.argmin(axis=1)  # first row holding the global minimum ...
        c = row_arg[bi, r]  # ... and its first column: the row-major first arg-min
        row = d[bi, r]  # S[r, :]
        col = dt[bi, c]  # S[:, c]
        if min_min:
            pen = penalty.copy()
            pen[bi, r] = np.inf
            pen[bi, c] = np.inf
            remove_c = (row + pen).min(axis=1) > (col + pen).min(axis=1)
        else:
            w = weight.copy()
            w[bi, r] = 0.0
            w[bi, c] = 0.0
            remove_c = np.einsum("bn,bn->b", row, w) > np.einsum("bn,bn->b", col, w)
        victim = np.where(remove_c, c, r)  # ties remove the row index
        order[bi, victim] = step
        alive[bi, victim] = False
        weight[bi, victim] = 0.0
        penalty[bi, victim] = np.inf
        row_min[bi, victim] = np.inf
        stale_b, stale_i = np.nonzero((row_arg == victim[:, None]) & alive)
        if stale_b.size:
            rows = d[stale_b, stale_i] + penalty[stale_b]
            k = np.arange(stale_b.size)
            rows[k, stale_i] = np.inf  # the diagonal
            arg = rows.argmin(axis=1)
            row_arg[stale_b, stale_i] = arg
            row_min[stale_b, stale_i] = rows[k, arg]
    return order


def saliency_from_matrices(mats: Tensor, distance: bool, strategy: str = "min_sum") -> Tensor:
    """Saliency (higher = keep) for a batch of ``[B, N, N]`` matrices of equal ``N``, in one loop.

    ``distance`` tells whether the entries are distances (small = redundant) or similarities (large =
    redundant). Strategies (docs/design.md, "Greedy strategies"):

    - ``sum``: ``dis * S.sum(dim=-1)`` (diagonal included), ``dis = +1`` for distances, ``-1`` otherwise.
    - ``min_sum`` / ``min_min``: the greedy loop. Each step takes the most redundant live pair ``(r, c)``,
      the first arg-min (distance) / arg-max (similarity) in row-major order, masks ``S[r,c]`` and ``S[c,r]``,
      then removes ``c`` if ``total_r > total_c`` else ``r`` for distances (``total_r < total_c`` for
      similarities), totals being the sums of the live entries of row ``r`` and column ``c``; ``min_min``
      compares the row minimum with the column minimum instead (maxima for similarities). Ties remove ``r``.
      Saliency is the removal step 0..N-2; the last survivor gets ``N - 1``.

    Cost of the greedy loop: N - 1 steps of O(N) vectorised work each (the totals are recomputed from the
    live entries of row ``r`` and column ``c``, so they are exact and never drift; per-row minima and first
    arg-minima are maintained, and only the rows whose arg-min was the removed filter are rescanned, O(N)
    each), so typically O(N^2) for the whole loop (O(N^3) in the worst case where every row's nearest
    neighbour is the filter just removed) instead of the O(N^3) of rescanning the whole matrix at every step.
    The ``B`` matrices share one Python loop (about 0.1-0.2 s for N = 1024 on one CPU core). It runs on the
    host (numpy); the result is returned as float64 on ``mats.device``.
    """
    strat = canonical_strategy(strategy)
    if mats.dim() != 3 or mats.shape[1] != mats.shape[2]:
        raise ValueError(f"expected matrices of shape [B, N, N], got {tuple(mats.shape)}")
    sign = 1.0 if distance else -1.0
    if strat == "sum":
        return sign * mats.to(torch.float64).sum(dim=-1)
    oriented = (sign * mats.detach().to(torch.float64)).cpu().numpy()  # similarities negated: min = redundant
    order = _greedy_removal_order(oriented, min_min=strat == "min_min")
    return torch.from_numpy(order).to(device=mats.device, dtype=torch.float64)


def saliency_from_matrix(mat: Tensor, distance: bool, strategy: str = "min_sum") -> Tensor:
    """Saliency of one ``N x N`` matrix; see :func:`saliency_from_matrices` for the strategies and cost."""
    if mat.dim() != 2:
        raise ValueError(f"expected an N x N matrix, got shape {tuple(mat.shape)}")
    return saliency_from_matrices(mat.unsqueeze(0), distance, strategy)[0]


# --------------------------------------------------------------------------------------------------------------
# Whole pipeline
# --------------------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------------------
# Step 4: the kept set
# --------------------------------------------------------------------------------------------------------------


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
