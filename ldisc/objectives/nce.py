"""Patch NCE: the invariant-and-spreading instance criterion (Ye et al. 2019) in a memory-lean form.

For L2-normalised queries q_i, keys x_j (the step's vectors, all ranks), bank negatives x_b (the
memory bank, sharded over ranks; none in the paper), s = q·x/τ and positive index pos(i):

    log Z_i = logaddexp(lse_i, lse_i^bank),  lse_i = log Σ_{j ≠ i} e^{s_ij},  lse_i^bank = log Σ_b e^{s_ib}
    p_ij    = e^{s_ij − log Z_i}
    t_i     = Σ_{j ∉ {i, pos(i)}} log(1 − p_ij),      t_i^bank = Σ_b log(1 − p_ib)
    loss_i  = −(s_{i,pos(i)} − log Z_i) − t_i − t_i^bank
    L       = mean_i loss_i

:func:`instance_nce` is written term by term as above. Every term is a pass of the one tiled kernel
(:mod:`ldisc.objectives.nce_kernel`): no N×N matrix ever exists, forward or backward; backward passes
recompute each tile and apply the analytic gradient. In-batch: :class:`LogSumExp` (lse) and
:class:`Log1mSum` (t). Bank: :class:`ldisc.objectives.bank_terms.BankTerms` (log Z and t^bank, fused,
all-reduced over ranks, nothing bank-sized gathered). With ``detach_keys`` (the authors' default:
their key side is taken with ``.data``) gradients reach the queries only.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from ldisc.objectives.bank_terms import BankTerms
from ldisc.objectives.nce_kernel import exp_tiles, log_sum_exp


class LogSumExp(torch.autograd.Function):
    """lse_i = log Σ_j exp(q_i·x_j/τ) over keys x, excluding ``exclude[i]``."""

    @staticmethod
    def forward(ctx, q, keys, tau, exclude, chunk):
        lse = log_sum_exp(q, keys, tau, chunk, exclude)
        ctx.save_for_backward(q, keys, exclude, lse)
        ctx.tau, ctx.chunk = tau, chunk
        return lse

    @staticmethod
    def backward(ctx, grad_lse):
        q, keys, exclude, lse = ctx.saved_tensors
        tau = ctx.tau
        # ∂lse_i/∂q_i = Σ_j p_ij x_j / τ,  ∂lse_i/∂x_j = p_ij q_i / τ   (p: softmax over the keys)
        softmax_keys = torch.zeros_like(q)
        grad_keys = torch.zeros_like(keys) if ctx.needs_input_grad[1] else None
        for rows, cols, p in exp_tiles(q, keys, tau, lse, ctx.chunk, exclude):
            softmax_keys[rows] += p @ keys[cols]
            if grad_keys is not None:
                grad_keys[cols] += p.mul_(grad_lse[rows, None]).t() @ q[rows] / tau
        grad_q = grad_lse[:, None] * softmax_keys / tau if ctx.needs_input_grad[0] else None
        return grad_q, grad_keys, None, None, None


class Log1mSum(torch.autograd.Function):
    """t_i = Σ_j log(1 − p_ij), p_ij = exp(q_i·x_j/τ − log Z_i), over keys x excluding ``exclude[i, :]``."""

    @staticmethod
    def forward(ctx, q, keys, log_z, tau, exclude, chunk):
        t = q.new_zeros(q.shape[0])
        for rows, _, p in exp_tiles(q, keys, tau, log_z, chunk, exclude, below_one=True):
            t[rows] += p.neg_().log1p_().sum(1)
        ctx.save_for_backward(q, keys, log_z, exclude)
        ctx.tau, ctx.chunk = tau, chunk
        return t

    @staticmethod
    def backward(ctx, grad_t):
        q, keys, log_z, exclude = ctx.saved_tensors
        tau = ctx.tau
        n, d = q.shape
        # with r = p / (1 − p):  ∂t_i/∂q_i = −Σ_j r_ij x_j / τ,  ∂t_i/∂log Z_i = Σ_j r_ij,
        # ∂t_i/∂x_j = −r_ij q_i / τ.  Packed row sums: [Σ_j r_ij x_j | Σ_j r_ij]
        packed = q.new_zeros(n, d + 1)
        grad_keys = torch.zeros_like(keys) if ctx.needs_input_grad[1] else None
        for rows, cols, p in exp_tiles(q, keys, tau, log_z, ctx.chunk, exclude, below_one=True):
            r = p.div_(torch.rsub(p, 1.0))
            packed[rows, :d] += r @ keys[cols]
            packed[rows, d] += r.sum(1)
            if grad_keys is not None:
                grad_keys[cols] -= r.mul_(grad_t[rows, None]).t() @ q[rows] / tau
        grad_q = -grad_t[:, None] * packed[:, :d] / tau if ctx.needs_input_grad[0] else None
        grad_log_z = grad_t * packed[:, d] if ctx.needs_input_grad[2] else None
        return grad_q, grad_keys, grad_log_z, None, None, None


class BankNegatives:
    """The bank negatives x_b: this rank's shard of the memory bank, over ``group`` (None: one process).

    Every rank of ``group`` must score the same queries; ``keys`` is this rank's shard."""

    def __init__(self, keys: torch.Tensor, group=None):
        self.keys, self.group = keys.detach(), group

    def terms(self, q: torch.Tensor, lse: torch.Tensor, tau: float, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(log Z_i = logaddexp(lse_i, lse_i^bank), t_i^bank) for every query, in one fused pass."""
        return BankTerms.apply(q, lse, self.keys, tau, chunk, self.group)


def instance_nce(queries: torch.Tensor, keys: torch.Tensor, self_index: torch.Tensor,
                 pos_index: torch.Tensor, tau: float, chunk: int, detach_keys: bool = True,
                 bank_negatives: BankNegatives | None = None,
                 all_queries: tuple[torch.Tensor, slice] | None = None) -> torch.Tensor:
    """loss_i of the module docstring, a vector over the queries.

    queries (N, D): this rank's vectors; keys (M, D): all vectors of the step (all ranks), of which
    ``self_index[i]`` is query i itself and ``pos_index[i]`` its positive; ``chunk``: the tile side
    (``objective.chunk``). ``bank_negatives`` add to every denominator; sharded over ranks, they need
    every rank's queries, given as ``all_queries = (every rank's queries, rows of this rank)``.
    """
    if torch.is_autocast_enabled(queries.device.type):   # scores and log-sum-exp stay in fp32
        with torch.autocast(queries.device.type, enabled=False):
            return instance_nce(queries.float(), keys.float(), self_index, pos_index, tau, chunk, detach_keys,
                                bank_negatives, all_queries if all_queries is None else
                                (all_queries[0].float(), all_queries[1]))
    if detach_keys:
        keys = keys.detach()
    positive = (queries * keys[pos_index]).sum(1) / tau                   # s_{i,pos(i)}
    log_z = LogSumExp.apply(queries, keys, tau, self_index, chunk)        # lse_i (j ≠ i)
    t_bank = 0.0
    if bank_negatives is not None:                                        # log Z_i with the bank, t_i^bank
        every_q, rows = all_queries if all_queries is not None else (queries, slice(None))
        every_lse = log_z if all_queries is None else _every_ranks_rows(log_z, bank_negatives.group, rows,
                                                                          len(every_q))
        log_z, t_bank = (v[rows] for v in bank_negatives.terms(every_q, every_lse, tau, chunk))
    excluded = torch.stack([self_index, pos_index], 1)
    t = Log1mSum.apply(queries, keys, log_z, tau, excluded, chunk)        # t_i (j ∉ {i, pos(i)})
    return -(positive - log_z) - t - t_bank


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
