"""The NCE terms of a (sharded) set of extra negatives — a memory bank — in one autograd function.

For queries q_i (every query of the step, the same on every rank), this rank's keys x_b (its shard
of the bank), s_ib = q_i·x_b / τ and a_i = log Z_i over the batch:

    lse_i   = log Σ_b e^{s_ib}                      over all ranks' shards (max, Σ e^{s−max}: all-reduce)
    log Z_i = logaddexp(a_i, lse_i)                 the full denominator, batch ∪ bank
    p_ib    = e^{s_ib − log Z_i},   r_ib = p_ib / (1 − p_ib)
    t_i     = Σ_b log(1 − p_ib),    R_i = Σ_b r_ib   (one packed all-reduce)

Outputs (log Z, t). Backward, with g = ∂L/∂log Z, h = ∂L/∂t and G_i = g_i + h_i R_i:

    ∂L/∂q_i = Σ_b (G_i p_ib − h_i r_ib) x_b / τ     (one matmul per tile, one all-reduce)
    ∂L/∂a_i = G_i e^{a_i − log Z_i}

Each query row must be owned by one rank (its loss, hence g and h, nonzero there only): g and h
are first summed over ranks (2N values) so every rank can weight its shard for every query.

Cost per (query, key): forward two score tiles, backward one — instead of four score passes and two
matmuls for separate log-sum-exp and log(1 − p) functions. Scores are computed in tiles of about
``TILE`` elements so that the elementwise passes run on cache-resident data.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

TILE = 1 << 19              # score elements per tile (2 MiB in fp32, about one L2)
_LOG1M_CLAMP = 1 - 1e-7


def _tiles(n: int, m: int, chunk: int):
    """(row slice, key slice) tiles covering n queries × m keys, rows of at most ``chunk``."""
    rows = max(1, min(chunk, n))
    cols = max(1, TILE // rows)
    for r0 in range(0, n, rows):
        for c0 in range(0, m, cols):
            yield slice(r0, min(n, r0 + rows)), slice(c0, min(m, c0 + cols))


def _augment(q: torch.Tensor, keys: torch.Tensor, tau: float, shift: torch.Tensor):
    """[q/τ | −shift] and [x | 1]: their product is s − shift, the scores already shifted (one matmul)."""
    return torch.cat([q / tau, -shift[:, None]], 1), torch.cat([keys, keys.new_ones(keys.shape[0], 1)], 1)


def _probs(qa: torch.Tensor, ka: torch.Tensor, rows: slice, cols: slice) -> tuple[torch.Tensor, torch.Tensor]:
    """(p, 1 − p) of a tile from augmented queries shifted by log Z; p clamped below 1."""
    p = (qa[rows] @ ka[cols].t()).exp_().clamp_(max=_LOG1M_CLAMP)
    return p, torch.rsub(p, 1.0)


def _sum_over_ranks(t: torch.Tensor, group) -> torch.Tensor:
    if group is not None:
        dist.all_reduce(t, group=group)
    return t


def _shard_logsumexp(q, keys, tau, chunk, group) -> torch.Tensor:
    """log Σ_b e^{s_ib} over all shards, each shifted by the Cauchy–Schwarz bound |q_i| max_b |x_b| / τ
    (so e^{s − shift} ≤ 1, no max pass), rows that underflow redone with their exact maximum."""
    n = q.shape[0]
    key_norm = keys.norm(dim=1).amax() if keys.shape[0] else q.new_tensor(float("-inf"))
    shift = q.norm(dim=1) * key_norm / tau
    sum_exp = q.new_zeros(n)
    qa, ka = _augment(q, keys, tau, shift)
    for rows, cols in _tiles(n, keys.shape[0], chunk):
        sum_exp[rows] += (qa[rows] @ ka[cols].t()).exp_().sum(1)
    lost = (sum_exp < 1e-30) & torch.isfinite(shift)
    if lost.any():                                   # |s| spans > 69: use the exact row maximum
        exact = torch.stack([(q[i] @ keys.t() / tau).amax() for i in lost.nonzero()[:, 0].tolist()])
        shift = shift.index_put((lost,), exact)
        qa, ka = _augment(q[lost], keys, tau, exact)
        redone = q.new_zeros(qa.shape[0])
        for rows, cols in _tiles(qa.shape[0], keys.shape[0], chunk):
            redone[rows] += (qa[rows] @ ka[cols].t()).exp_().sum(1)
        sum_exp = sum_exp.index_put((lost,), redone)
    if group is not None:
        global_shift = shift.clone()
        dist.all_reduce(global_shift, op=dist.ReduceOp.MAX, group=group)
        sum_exp = _sum_over_ranks(sum_exp * torch.exp(torch.nan_to_num(shift - global_shift, nan=0.0)), group)
        shift = global_shift
    return torch.log(sum_exp) + shift


class ShardedKeyTerms(torch.autograd.Function):
    """(log Z, t) = f(q, a) over this rank's ``keys`` and those of all ranks of ``group``."""

    @staticmethod
    def forward(ctx, q, a, keys, tau, chunk, group):
        log_z = torch.logaddexp(a, _shard_logsumexp(q, keys, tau, chunk, group))
        n = q.shape[0]
        packed = q.new_zeros(2, n)                     # [t | R]
        qa, ka = _augment(q, keys, tau, log_z)
        for rows, cols in _tiles(n, keys.shape[0], chunk):
            p, one_minus_p = _probs(qa, ka, rows, cols)
            packed[1, rows] += p.div_(one_minus_p).sum(1)
            packed[0, rows] += one_minus_p.log_().sum(1)
        packed = _sum_over_ranks(packed, group)
        ctx.save_for_backward(q, a, keys, log_z, packed[1])
        ctx.tau, ctx.chunk, ctx.group = tau, chunk, group
        return log_z, packed[0].clone()

    @staticmethod
    def backward(ctx, grad_log_z, grad_t):
        q, a, keys, log_z, r_sum = ctx.saved_tensors
        tau, chunk, group = ctx.tau, ctx.chunk, ctx.group
        grads = _sum_over_ranks(torch.stack([grad_log_z, grad_t]), group)   # every row's g, h
        g_total = grads[0] + grads[1] * r_sum                              # G = g + h R
        grad_q = None
        if ctx.needs_input_grad[0]:
            weighted = torch.zeros_like(q)
            qa, ka = _augment(q, keys, tau, log_z)
            for rows, cols in _tiles(q.shape[0], keys.shape[0], chunk):
                p, one_minus_p = _probs(qa, ka, rows, cols)
                # G p − h p / (1 − p) = p · (G − h / (1 − p))
                w = one_minus_p.reciprocal_().mul_(-grads[1, rows, None]).add_(g_total[rows, None]).mul_(p)
                weighted[rows] += w @ keys[cols]
            grad_q = _sum_over_ranks(weighted, group).div_(tau)
        grad_a = g_total * torch.exp(a - log_z) if ctx.needs_input_grad[1] else None
        return grad_q, grad_a, None, None, None, None
