"""The tiled score kernel every NCE term is computed with (in-batch keys and bank negatives alike).

For queries q_i, keys x_j and a per-row shift c_i, one tile of rows × keys is

    e_ij = exp(s_ij − c_i),    s_ij = q_i·x_j / τ,

computed as ONE matmul of shifted operands, [q/τ | −c] · [x | 1]ᵀ (:func:`shifted_operands`), over
square tiles of at most ``chunk`` queries × ``chunk`` keys (:func:`tiles`): no N×M matrix ever exists
and the elementwise passes run on cache-sized blocks. ``chunk`` is the one tiling setting
(``objective.chunk``). Two shifts are used:

* c_i = |q_i| max_j |x_j| / τ ≥ max_j s_ij (Cauchy–Schwarz, :func:`score_bound`): every e ≤ 1, no
  max pass; this is the shift of :func:`log_sum_exp`, the one stabiliser of every log Σ exp;
* c_i = log Z_i: then e_ij = p_ij, the probability of key j for query i (clamped below 1 for log(1 − p)).
"""
from __future__ import annotations

from typing import Iterator

import torch
import torch.distributed as dist

_BELOW_ONE = 1 - 1e-7          # p is clamped here before log(1 − p) / (1 − p)
_UNDERFLOW = 1e-30             # a shifted row sum below this is redone with the exact row maximum


def tiles(n: int, m: int, chunk: int) -> Iterator[tuple[slice, slice]]:
    """(row slice, key slice) tiles covering n queries × m keys, at most ``chunk`` × ``chunk`` each."""
    side = max(1, int(chunk))
    for r0 in range(0, n, side):
        for c0 in range(0, m, side):
            yield slice(r0, min(n, r0 + side)), slice(c0, min(m, c0 + side))


def shifted_operands(q: torch.Tensor, keys: torch.Tensor, tau: float,
                     shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[q/τ | −c] and [x | 1]: their product is s − c, the scores already shifted (one matmul)."""
    return torch.cat([q / tau, -shift[:, None]], 1), torch.cat([keys, keys.new_ones(keys.shape[0], 1)], 1)


def score_bound(q: torch.Tensor, keys: torch.Tensor, tau: float) -> torch.Tensor:
    """c_i = |q_i| max_j |x_j| / τ, an upper bound of every score of row i (−inf without keys)."""
    key_norm = keys.norm(dim=1).amax() if keys.shape[0] else q.new_tensor(float("-inf"))
    return q.norm(dim=1) * key_norm / tau


def _drop_excluded(tile: torch.Tensor, exclude: torch.Tensor | None, rows: slice, cols: slice) -> torch.Tensor:
    """Zero, in place, the entries of a tile whose key index is excluded for that row.

    ``exclude``: (N,) or (N, k) global key indices per query row, or None."""
    if exclude is None:
        return tile
    ex = exclude[rows]
    ex = ex[:, None] if ex.ndim == 1 else ex
    local = ex - cols.start
    hit = (ex >= 0) & (local >= 0) & (local < tile.shape[1])
    if hit.any():
        r = torch.arange(tile.shape[0], device=tile.device)[:, None].expand_as(ex)
        tile[r[hit], local[hit]] = 0.0
    return tile


def exp_tiles(q: torch.Tensor, keys: torch.Tensor, tau: float, shift: torch.Tensor, chunk: int,
              exclude: torch.Tensor | None = None,
              below_one: bool = False) -> Iterator[tuple[slice, slice, torch.Tensor]]:
    """(rows, cols, e) for every tile: e = exp(s − shift) with excluded keys zeroed, clamped below 1 if
    ``below_one`` (then, with shift = log Z, e is p and 1 − p > 0). Each e is a fresh tensor (in-place ok)."""
    qa, ka = shifted_operands(q, keys, tau, shift)
    for rows, cols in tiles(q.shape[0], keys.shape[0], chunk):
        e = (qa[rows] @ ka[cols].t()).exp_()
        yield rows, cols, _drop_excluded(e.clamp_(max=_BELOW_ONE) if below_one else e, exclude, rows, cols)


def _exact_log_sum_exp(q: torch.Tensor, keys: torch.Tensor, tau: float,
                       exclude: torch.Tensor | None) -> torch.Tensor:
    """log Σ_j exp(s_ij) with the exact row maximum (the few rows whose bounded sum underflows)."""
    s = q @ keys.t() / tau
    if exclude is not None:
        ex = exclude[:, None] if exclude.ndim == 1 else exclude
        r = torch.arange(s.shape[0], device=s.device)[:, None].expand_as(ex)
        s[r[ex >= 0], ex[ex >= 0]] = float("-inf")
    return torch.logsumexp(s, 1)


def log_sum_exp(q: torch.Tensor, keys: torch.Tensor, tau: float, chunk: int,
                exclude: torch.Tensor | None = None, group=None) -> torch.Tensor:
    """lse_i = log Σ_j exp(q_i·x_j / τ) over the keys not excluded for row i — over every rank's
    ``keys`` of ``group`` when given (then every rank passes the same queries). Forward only.

    Shifted by :func:`score_bound`; rows whose shifted sum underflows (scores spanning > 69) are redone
    with the exact maximum. Across ranks: lse = m + log Σ_r exp(lse_r − m), m = max_r lse_r."""
    shift = score_bound(q, keys, tau)
    sum_exp = q.new_zeros(q.shape[0])
    for rows, _, e in exp_tiles(q, keys, tau, shift, chunk, exclude):
        sum_exp[rows] += e.sum(1)
    lse = torch.log(sum_exp) + shift
    lost = (sum_exp < _UNDERFLOW) & torch.isfinite(shift)
    if lost.any():
        lse[lost] = _exact_log_sum_exp(q[lost], keys, tau, None if exclude is None else exclude[lost])
    if group is None:
        return lse
    top = lse.clone()
    dist.all_reduce(top, op=dist.ReduceOp.MAX, group=group)
    total = sum_over_ranks(torch.exp(torch.nan_to_num(lse - top, nan=float("-inf"))), group)
    return torch.log(total) + top


def sum_over_ranks(t: torch.Tensor, group) -> torch.Tensor:
    """Sum ``t`` over the ranks of ``group`` in place (no-op for one process, ``group=None``)."""
    if group is not None:
        dist.all_reduce(t, group=group)
    return t
