"""Activation checkpointing of the LD network's stages (``engine.activation_checkpointing``).

``none`` (default): every activation the backward pass needs is kept from the forward pass.
``decoder``: each decoder stage and both heads keep only their inputs; what is inside them is
recomputed during the backward pass. The heads work at full resolution, so most of the memory is
there. ``all``: the five encoder blocks too.

Recomputation is ``torch.utils.checkpoint`` (non-reentrant). It gives the same losses and gradients
as a plain step: batch norm in training mode normalises with the batch's statistics, which the
recomputation sees again. It would also update the running statistics a second time; they are put
back after each recomputation, so the buffers also equal a plain step's. Segments run plainly (no
checkpoint) under ``torch.no_grad`` and in eval mode.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

CHECKPOINTING = ("none", "decoder", "all")


@contextlib.contextmanager
def _running_stats_kept(module: nn.Module):
    """Restore every batch norm's running statistics in ``module`` on exit (even an early one)."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [[b.clone() for b in (m.running_mean, m.running_var, m.num_batches_tracked)] for m in bns]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, (mean, var, count) in zip(bns, saved):
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)


def run_segment(module: nn.Module, *inputs: torch.Tensor, enabled: bool = True):
    """``module(*inputs)``, checkpointed when ``enabled`` and gradients are being recorded."""
    if not (enabled and module.training and torch.is_grad_enabled()):
        return module(*inputs)
    calls = 0

    def body(*xs):
        nonlocal calls
        calls += 1
        if calls == 1:            # the forward pass
            return module(*xs)
        with _running_stats_kept(module):   # a recomputation during backward
            return module(*xs)

    return checkpoint(body, *inputs, use_reentrant=False)


def set_activation_checkpointing(model: nn.Module, mode: str) -> nn.Module:
    """Set ``mode`` (one of :data:`CHECKPOINTING`) on an :class:`~ldisc.model.LDNet`; returns it."""
    if mode not in CHECKPOINTING:
        raise ValueError(f"unknown engine.activation_checkpointing {mode!r}; one of {CHECKPOINTING}")
    model.encoder.checkpoint = mode == "all"
    model.decoder.checkpoint = mode != "none"
    model.checkpoint_heads = mode != "none"
    return model
