"""Batch norm over the global batch on any device: ``torch.nn.SyncBatchNorm`` refuses CPU tensors.

:class:`GlobalBatchNorm2d` all-reduces per-channel (count, Σx, Σx²) with a differentiable all-reduce
(:func:`ldisc.model.batch_stats.batch_statistics`), so W ranks × batch B normalise exactly as 1 rank × W·B (up to float
summation order).
:func:`convert_sync_batchnorm` uses torch's SyncBatchNorm on CUDA and this one elsewhere.
"""
from __future__ import annotations

import torch
from torch import nn

from ldisc.dist import multi_process
from ldisc.model.batch_stats import batch_statistics, normalise, update_running_statistics


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics span every rank of the default process group."""

    global_batch = True      # read by ldisc.model.batch_stats.spans_ranks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and multi_process()):
            return super().forward(x)
        mean, var, count = batch_statistics(x, across_ranks=True)
        update_running_statistics(self, mean, var, count)
        return normalise(x, self, mean, var)


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
