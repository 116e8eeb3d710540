"""The NCE terms of the bank negatives — a memory bank sharded over ranks — in one autograd function.

For queries q_i (every query of the step, the same on every rank), this rank's bank shard x_b,
s_ib = q_i·x_b / τ and lse_i = log Σ_{j≠i} e^{s_ij} over the batch (:mod:`ldisc.objectives.nce`):

    lse_i^bank = log Σ_b e^{s_ib}                       over all ranks' shards (nce_kernel.log_sum_exp)
    log Z_i    = logaddexp(lse_i, lse_i^bank)           the full denominator, batch ∪ bank
    p_ib       = e^{s_ib − log Z_i},   r_ib = p_ib / (1 − p_ib)
    t_i^bank   = Σ_b log(1 − p_ib),    R_i = Σ_b r_ib   (one packed all-reduce)

Outputs (log Z, t^bank). Backward, with g = ∂L/∂log Z, h = ∂L/∂t^bank and G_i = g_i + h_i R_i:

    ∂L/∂q_i   = Σ_b (G_i p_ib − h_i r_ib) x_b / τ       (one matmul per tile, one all-reduce)
    ∂L/∂lse_i = G_i e^{lse_i − log Z_i}

Each query row must be owned by one rank (its loss, hence g and h, nonzero there only): g and h
are first summed over ranks (2N values) so every rank can weight its shard for every query.
Bank entries carry no gradient. Cost per (query, bank entry): forward two tile passes, backward one
(separate log-sum-exp and log(1 − p) functions would take four score passes and two matmuls).
"""
from __future__ import annotations

import torch

from ldisc.objectives.nce_kernel import exp_tiles, log_sum_exp, sum_over_ranks


class BankTerms(torch.autograd.Function):
    """(log Z, t^bank) = f(q, lse) over this rank's bank ``keys`` and those of every rank of ``group``."""

    @staticmethod
    def forward(ctx, q, lse, keys, tau, chunk, group):
        log_z = torch.logaddexp(lse, log_sum_exp(q, keys, tau, chunk, group=group))
        packed = q.new_zeros(2, q.shape[0])                 # [t^bank | R]
        for rows, _, p in exp_tiles(q, keys, tau, log_z, chunk, below_one=True):
            one_minus_p = torch.rsub(p, 1.0)
            packed[1, rows] += p.div_(one_minus_p).sum(1)
            packed[0, rows] += one_minus_p.log_().sum(1)
        packed = sum_over_ranks(packed, group)
        ctx.save_for_backward(q, lse, keys, log_z, packed[1])
        ctx.tau, ctx.chunk, ctx.group = tau, chunk, group
        return log_z, packed[0].clone()

    @staticmethod
    def backward(ctx, grad_log_z, grad_t):
        q, lse, keys, log_z, r_sum = ctx.saved_tensors
        tau, group = ctx.tau, ctx.group
        grads = sum_over_ranks(torch.stack([grad_log_z, grad_t]), group)   # every row's g, h
        g_total = grads[0] + grads[1] * r_sum                              # G = g + h R
        grad_q = None
        if ctx.needs_input_grad[0]:
            weighted = torch.zeros_like(q)
            for rows, cols, p in exp_tiles(q, keys, tau, log_z, ctx.chunk, below_one=True):
                # G p − h p / (1 − p) = p · (G − h / (1 − p))
                w = torch.rsub(p, 1.0).reciprocal_().mul_(-grads[1, rows, None]).add_(g_total[rows, None]).mul_(p)
                weighted[rows] += w @ keys[cols]
            grad_q = sum_over_ranks(weighted, group).div_(tau)
        grad_lse = g_total * torch.exp(lse - log_z) if ctx.needs_input_grad[1] else None
        return grad_q, grad_lse, None, None, None, None
