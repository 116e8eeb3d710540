"""Patch NCE: the invariant-and-spreading instance criterion (Ye et al. 2019) in a memory-lean form.

For L2-normalised queries q_i, keys x_j, s_ij = q_i·x_j / τ and positive index pos(i):

    Z_i    = Σ_{j ≠ i} exp(s_ij)  (+ Σ_{b ∈ bank} exp(s_ib))
    p_ij   = exp(s_ij) / Z_i
    loss_i = −log p_{i,pos(i)} − Σ_{j ∉ {i, pos(i)}} log(1 − p_ij)
    L      = mean_i loss_i

Scores are processed in cache-sized tiles (rows × key columns): no N×N matrix ever exists, forward
or backward; the backward pass recomputes each tile and applies the analytic gradient. With
``detach_keys`` (the authors' default: their key side is taken with ``.data``) gradients reach the
queries only. Negatives beyond the batch — the distributed memory bank, sharded over ranks — enter
the same denominator through :class:`ExtraNegatives` (see :mod:`ldisc.objectives.key_terms`: forward
statistics and backward partial sums all-reduced, nothing key-sized gathered).
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from ldisc.objectives.key_terms import ShardedKeyTerms, _augment, _tiles

DEFAULT_CHUNK = 1024
_LOG1M_CLAMP = 1 - 1e-7


def _drop_excluded(tile: torch.Tensor, exclude: torch.Tensor | None, rows: slice, cols: slice) -> torch.Tensor:
    """Zero, in place, the entries of a (rows × cols) tile whose key is excluded for that row."""
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


def _tile_exp(qa: torch.Tensor, ka: torch.Tensor, rows: slice, cols: slice, exclude: torch.Tensor | None,
              clamp: bool = False) -> torch.Tensor:
    """exp(s − shift) of one tile from augmented operands, excluded keys zeroed (p < 1 if ``clamp``)."""
    e = (qa[rows] @ ka[cols].t()).exp_()
    return _drop_excluded(e.clamp_(max=_LOG1M_CLAMP) if clamp else e, exclude, rows, cols)


def _exact_lse(q: torch.Tensor, keys: torch.Tensor, tau: float, exclude: torch.Tensor | None) -> torch.Tensor:
    """Row-wise log-sum-exp with an exact maximum (rare fallback for rows whose shifted sum underflows)."""
    s = q @ keys.t() / tau
    if exclude is not None:
        ex = exclude[:, None] if exclude.ndim == 1 else exclude
        r = torch.arange(s.shape[0], device=s.device)[:, None].expand_as(ex)
        s[r[ex >= 0], ex[ex >= 0]] = float("-inf")
    return torch.logsumexp(s, 1)


class KeyLogSumExp(torch.autograd.Function):
    """lse_i = log Σ_j exp(q_i·x_j/τ) over keys x (excluding ``exclude[i]``).

    Scores are shifted by the Cauchy–Schwarz bound |q_i| max_j |x_j| / τ inside the matmul (no max
    pass) and processed in cache-sized tiles; rows whose shifted sum underflows are redone exactly.
    """

    @staticmethod
    def forward(ctx, q, keys, tau, exclude, chunk):
        n, m = q.shape[0], keys.shape[0]
        key_norm = keys.norm(dim=1).amax() if m else q.new_tensor(float("-inf"))
        shift = q.norm(dim=1) * key_norm / tau
        sum_exp = q.new_zeros(n)
        qa, ka = _augment(q, keys, tau, shift)
        for rows, cols in _tiles(n, m, chunk):
            sum_exp[rows] += _tile_exp(qa, ka, rows, cols, exclude).sum(1)
        lse = torch.log(sum_exp) + shift
        lost = (sum_exp < 1e-30) & torch.isfinite(shift)
        if lost.any():
            lse[lost] = _exact_lse(q[lost], keys, tau, None if exclude is None else exclude[lost])
        ctx.save_for_backward(q, keys, exclude, lse)
        ctx.tau, ctx.chunk = tau, chunk
        return lse

    @staticmethod
    def backward(ctx, grad_lse):
        q, keys, exclude, lse = ctx.saved_tensors
        tau, chunk = ctx.tau, ctx.chunk
        softmax_keys = torch.zeros_like(q)                  # Σ_j p_ij x_j  (p = softmax over keys)
        grad_keys = torch.zeros_like(keys) if ctx.needs_input_grad[1] else None
        qa, ka = _augment(q, keys, tau, lse)
        for rows, cols in _tiles(q.shape[0], keys.shape[0], chunk):
            p = _tile_exp(qa, ka, rows, cols, exclude)
            softmax_keys[rows] += p @ keys[cols]
            if grad_keys is not None:
                grad_keys[cols] += p.mul_(grad_lse[rows, None]).t() @ q[rows] / tau
        grad_q = grad_lse[:, None] * softmax_keys / tau if ctx.needs_input_grad[0] else None
        return grad_q, grad_keys, None, None, None


class KeyLog1mSum(torch.autograd.Function):
    """t_i = Σ_j log(1 − exp(q_i·x_j/τ − log Z_i)) over keys x (excluding ``exclude[i, :]``)."""

    @staticmethod
    def forward(ctx, q, keys, log_z, tau, exclude, chunk):
        total = q.new_zeros(q.shape[0])
        qa, ka = _augment(q, keys, tau, log_z)
        for rows, cols in _tiles(q.shape[0], keys.shape[0], chunk):
            p = _tile_exp(qa, ka, rows, cols, exclude, clamp=True)
            total[rows] += p.neg_().log1p_().sum(1)
        ctx.save_for_backward(q, keys, log_z, exclude)
        ctx.tau, ctx.chunk = tau, chunk
        return total

    @staticmethod
    def backward(ctx, grad_t):
        q, keys, log_z, exclude = ctx.saved_tensors
        tau, chunk = ctx.tau, ctx.chunk
        n, d = q.shape
        # packed partial sums: [Σ_j r_ij x_j | Σ_j r_ij] with r = p / (1 − p)
        packed = q.new_zeros(n, d + 1)
        grad_keys = torch.zeros_like(keys) if ctx.needs_input_grad[1] else None
        qa, ka = _augment(q, keys, tau, log_z)
        for rows, cols in _tiles(n, keys.shape[0], chunk):
            p = _tile_exp(qa, ka, rows, cols, exclude, clamp=True)
            r = p.div_(torch.rsub(p, 1.0))
            packed[rows, :d] += r @ keys[cols]
            packed[rows, d] += r.sum(1)
            if grad_keys is not None:
                grad_keys[cols] -= r.mul_(grad_t[rows, None]).t() @ q[rows] / tau
        grad_q = -grad_t[:, None] * packed[:, :d] / tau if ctx.needs_input_grad[0] else None
        grad_log_z = grad_t * packed[:, d] if ctx.needs_input_grad[2] else None
        return grad_q, grad_keys, grad_log_z, None, None, None


class ExtraNegatives:
    """Negatives beyond the batch (e.g. a memory bank), possibly sharded over a process group.

    Every rank of ``group`` must call with the same queries; ``keys`` is this rank's shard.
    """

    def __init__(self, keys: torch.Tensor, group=None, chunk: int = DEFAULT_CHUNK):
        self.keys, self.group, self.chunk = keys.detach(), group, chunk

    def terms(self, q: torch.Tensor, log_z_batch: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(log Z with these negatives added, Σ log(1 − p) over them) in one pass: see ``key_terms``."""
        return ShardedKeyTerms.apply(q, log_z_batch, self.keys, tau, self.chunk, self.group)


def instance_nce(queries: torch.Tensor, keys: torch.Tensor, self_index: torch.Tensor,
                 pos_index: torch.Tensor, tau: float = 0.1, detach_keys: bool = True,
                 extra: ExtraNegatives | None = None, extra_queries: tuple[torch.Tensor, slice] | None = None,
                 chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """Per-query loss_i (see module docstring). Returns a vector over the queries.

    queries (N, D): this rank's vectors; keys (M, D): all vectors of the step (all ranks), of which
    ``self_index[i]`` is query i itself and ``pos_index[i]`` its positive. ``extra`` adds negatives
    to every denominator; when it is sharded it needs the same queries on every rank, given as
    ``extra_queries = (all_queries, rows_of_this_rank)``.
    """
    if torch.is_autocast_enabled(queries.device.type):   # scores and log-sum-exp stay in fp32
        with torch.autocast(queries.device.type, enabled=False):
            return instance_nce(queries.float(), keys.float(), self_index, pos_index, tau, detach_keys,
                                extra, extra_queries if extra_queries is None else
                                (extra_queries[0].float(), extra_queries[1]), chunk)
    if detach_keys:
        keys = keys.detach()
    positive = (queries * keys[pos_index]).sum(1) / tau
    log_z = KeyLogSumExp.apply(queries, keys, tau, self_index, chunk)
    extra_log1m = 0.0
    if extra is not None:
        all_q, rows = extra_queries if extra_queries is not None else (queries, slice(None))
        batch_log_z = log_z if extra_queries is None else _every_ranks_rows(log_z, extra.group, rows, len(all_q))
        full_log_z, extra_log1m = extra.terms(all_q, batch_log_z, tau)
        log_z, extra_log1m = full_log_z[rows], extra_log1m[rows]
    excluded = torch.stack([self_index, pos_index], 1)
    batch_log1m = KeyLog1mSum.apply(queries, keys, log_z, tau, excluded, chunk)
    return -(positive - log_z) - batch_log1m - extra_log1m


def _every_ranks_rows(local: torch.Tensor, group, rows: slice, n: int) -> torch.Tensor:
    """All ``n`` rows: this rank's ``local`` rows (keeping their gradient) and, detached, every other
    rank's (they own those losses), exchanged with one sum all-reduce."""
    if group is None:
        return local
    everyone = local.new_zeros(n)
    everyone[rows] = local.detach()
    dist.all_reduce(everyone, group=group)
    return torch.cat([everyone[:rows.start], local, everyone[rows.stop:]])


def authors_nce(x: torch.Tensor, tau: float = 0.1, detach_keys: bool = True) -> torch.Tensor:
    """Reference: the authors' BatchCriterion form, materialising the N×N matrices (tests, benches).

    x: (N, D) unit vectors; the positive of row i is row (i + N/2) mod N.
    """
    n = x.shape[0]
    key = x.detach() if detach_keys else x
    reordered = torch.cat([key[n // 2:], key[:n // 2]])
    pos = (x * reordered).sum(1).div(tau).exp()
    all_prob = (x @ key.t()).div(tau).exp()
    all_div = all_prob.sum(1) - all_prob.diagonal()   # Σ_{j≠i}
    lnPmt = pos / all_div
    lnPon = all_prob / all_div[:, None]
    eye = torch.eye(n, dtype=torch.bool, device=x.device)
    pos_mask = torch.roll(eye, n // 2, dims=1)
    log1m = torch.log(1 - lnPon).masked_fill(eye | pos_mask, 0.0)
    return -(torch.log(lnPmt) + log1m.sum(1)).mean()
