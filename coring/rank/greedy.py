"""Step 3: saliency from the pairwise matrix, the paper's greedy loop or a sum (docs/design.md, "Greedy strategies")."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from coring.rank.names import canonical_strategy

__all__ = ['saliency_from_matrices', 'saliency_from_matrix']


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

    The ``B`` matrices share one loop (its cost: docs/design.md, "Greedy strategies"). It runs on the
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
