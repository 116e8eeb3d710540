"""Batch-norm training statistics, computed once and shared by every place that normalises a batch.

:func:`batch_statistics` gives the per-channel mean and biased variance of a training batch — over this
rank's batch, or over every rank's with a differentiable all-reduce of (count, Σx, Σx²) — as tensors
autograd differentiates through. :func:`update_running_statistics` folds them into a batch norm's
running buffers exactly as ``torch.nn.BatchNorm2d`` does (unbiased variance, ``momentum`` or the
cumulative average when it is None). Users: :class:`ldisc.train.sync_bn.GlobalBatchNorm2d` and the
chunked heads of :mod:`ldisc.model.chunked_heads`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ldisc.dist import all_reduce_sum, multi_process


def spans_ranks(bn: nn.Module) -> bool:
    """Whether ``bn`` normalises over the global batch in this process (a synchronised batch norm in a
    multi-process run)."""
    return multi_process() and (isinstance(bn, nn.SyncBatchNorm) or getattr(bn, "global_batch", False))


class _Moments(torch.autograd.Function):
    """Per-channel mean and biased variance over pieces (n_i, C, H, W) of one batch, two-pass, keeping
    only the pieces for the backward pass: ∂mean/∂x = 1/n, ∂var/∂x = 2(x − mean)/n. (``torch.var_mean``
    over (0, 2, 3) is 3× slower on CPU than these contiguous sums.)"""

    @staticmethod
    def forward(ctx, *pieces: torch.Tensor):
        n = sum(p.numel() for p in pieces) // pieces[0].shape[1]
        mean = sum(p.sum((0, 2, 3), dtype=torch.float32) for p in pieces) / n
        var = sum((p.float() - mean.view(1, -1, 1, 1)).pow_(2).sum((0, 2, 3)) for p in pieces) / n
        ctx.save_for_backward(mean, *pieces)       # in their own precision (bf16 under autocast)
        ctx.n = n
        return mean, var

    @staticmethod
    def backward(ctx, g_mean: torch.Tensor, g_var: torch.Tensor):
        mean, *pieces = ctx.saved_tensors
        scale = (2 / ctx.n) * g_var                  # x·scale + shift = 2(x − mean)·g_var/n + g_mean/n
        shift = g_mean / ctx.n - mean * scale
        return tuple(channel_affine(p.float(), scale, shift).to(p.dtype) for p in pieces)


def batch_statistics(x: torch.Tensor | list[torch.Tensor], across_ranks: bool
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean, biased variance, count) per channel of ``x`` (N, C, H, W) — or of the batch that pieces
    ``x = [x_1, x_2, …]`` form along N — in fp32."""
    pieces = list(x) if isinstance(x, (list, tuple)) else [x]
    c = pieces[0].shape[1]
    n_local = torch.tensor([sum(p.numel() for p in pieces) // c], device=pieces[0].device, dtype=torch.float32)
    if not across_ranks:
        mean, var = _Moments.apply(*pieces)
        return mean, var, n_local[0]
    sums = sum(torch.cat([p.sum((0, 2, 3), dtype=torch.float32), p.float().pow(2).sum((0, 2, 3))]) for p in pieces)
    stats = all_reduce_sum(torch.cat([n_local, sums]))      # one collective for both moments
    n, s, ss = stats[0], stats[1:1 + c], stats[1 + c:]
    mean = s / n
    return mean, (ss / n - mean * mean).clamp_min(0), n


@torch.no_grad()
def update_running_statistics(bn: nn.modules.batchnorm._BatchNorm, mean: torch.Tensor, var: torch.Tensor,
                              count: torch.Tensor) -> None:
    if not (bn.track_running_stats and bn.running_mean is not None):
        return
    bn.num_batches_tracked.add_(1)
    m = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
    unbiased = var * count / (count - 1).clamp_min(1)
    bn.running_mean.mul_(1 - m).add_(m * mean.detach().to(bn.running_mean))
    bn.running_var.mul_(1 - m).add_(m * unbiased.detach().to(bn.running_var))


def normalise(x: torch.Tensor, bn: nn.modules.batchnorm._BatchNorm, mean: torch.Tensor,
              var: torch.Tensor) -> torch.Tensor:
    """``bn``'s affine batch normalisation of ``x`` with the given statistics:
    (x − mean)·γ/√(var + ε) + β, as one per-channel scale and shift."""
    scale = torch.rsqrt(var + bn.eps)
    if bn.affine:
        scale = scale * bn.weight.float()
    shift = -mean * scale + (bn.bias.float() if bn.affine else 0)
    return channel_affine(x.float(), scale, shift).to(x.dtype)


def channel_affine(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """x·scale + shift per channel of (N, C, H, W), differentiable in all three: the fused
    inference-mode batch-norm kernel with mean 0 and variance 1 (1.6× faster on CPU than mul + add)."""
    one = torch.ones_like(scale)
    return F.batch_norm(x, torch.zeros_like(scale), one, scale, shift, training=False, momentum=0.0, eps=0.0)
