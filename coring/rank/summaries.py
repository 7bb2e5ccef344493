"""Step 1: each filter's truncated HOSVD summary, batched over a layer (docs/design.md, "Filter summaries")."""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ['filter_summaries']


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
