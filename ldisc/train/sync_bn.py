"""Batch norm over the global batch on any device: ``torch.nn.SyncBatchNorm`` refuses CPU tensors.

:class:`GlobalBatchNorm2d` all-reduces per-channel (count, Σx, Σx²) with a differentiable all-reduce
(:func:`ldisc.dist.all_reduce_sum`), so W ranks × batch B normalise exactly as 1 rank × W·B (up to float
summation order).
:func:`convert_sync_batchnorm` uses torch's SyncBatchNorm on CUDA and this one elsewhere.
"""
from __future__ import annotations

import torch
from torch import nn

from ldisc.dist import all_reduce_sum, multi_process


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics span every rank of the default process group."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and multi_process()):
            return super().forward(x)
        xf = x.float()
        n_local = torch.tensor([x.numel() / x.shape[1]], device=x.device, dtype=torch.float32)
        stats = torch.cat([n_local, xf.sum((0, 2, 3)), (xf * xf).sum((0, 2, 3))])
        stats = all_reduce_sum(stats)
        c = x.shape[1]
        n, s, ss = stats[0], stats[1:1 + c], stats[1 + c:]
        mean = s / n
        var = (ss / n - mean * mean).clamp_min(0)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.1
                self.running_mean.mul_(1 - m).add_(m * mean.to(self.running_mean))
                self.running_var.mul_(1 - m).add_(m * (var * n / (n - 1).clamp_min(1)).to(self.running_var))
                self.num_batches_tracked.add_(1)
        y = (xf - mean.view(1, -1, 1, 1)) * torch.rsqrt(var.view(1, -1, 1, 1) + self.eps)
        if self.affine:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return y.to(x.dtype)


def _to_global(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, GlobalBatchNorm2d):
        new = GlobalBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                module.track_running_stats)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new
    for name, child in module.named_children():
        setattr(module, name, _to_global(child))
    return module


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm2d of ``module`` → a global-batch one (parameter names are unchanged)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _to_global(module)
