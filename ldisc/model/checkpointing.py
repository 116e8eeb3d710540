"""Activation checkpointing of the LD network's stages (``engine.activation_checkpointing``).

``none`` (default): every activation the backward pass needs is kept from the forward pass.
``decoder``: each decoder stage and both heads keep only their inputs; what is inside them is
recomputed during the backward pass. The heads work at full resolution, so most of the memory is
there. ``all``: the five encoder blocks too.
``selective``: recompute what is large and cheap, keep what is expensive. The two heads run image-chunk
by image-chunk (:mod:`ldisc.model.chunked_heads`): the full-resolution embedding and masks are never
held for the whole batch, only the heads' first convolution output, and the losses read per-image
reductions of them; each head's last convolution is computed twice. The joined feature the heads read
is recomputed from its inputs, and the first encoder block keeps only its second convolution's output
(PyTorch's selective activation checkpointing: convolution outputs kept, except a convolution reading
the 3-channel image; batch norm, ReLU, upsampling and concatenation recomputed). Everything else runs
plainly. At 448 px, batch 4: 9.55 → 5.68 GB peak for 1.13× the step time (docs/training.md, "Memory
and speed").

Recomputation is ``torch.utils.checkpoint`` (non-reentrant). It gives the same losses and gradients
as a plain step: batch norm in training mode normalises with the batch's statistics, which the
recomputation sees again. It would also update the running statistics a second time; they are put
back after each recomputation, so the buffers also equal a plain step's. Segments run plainly (no
checkpoint) under ``torch.no_grad`` and in eval mode.
"""
from __future__ import annotations

import contextlib
import functools

import torch
from torch import nn
from torch.utils._python_dispatch import _disable_current_modes
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

CHECKPOINTING = ("none", "decoder", "all", "selective")


@contextlib.contextmanager
def _running_stats_kept(module: nn.Module):
    """Restore every batch norm's running statistics in ``module`` on exit (even an early one)."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    # outside any dispatch mode: selective checkpointing replays exactly the forward's operations
    with _disable_current_modes():
        saved = [[b.clone() for b in (m.running_mean, m.running_var, m.num_batches_tracked)] for m in bns]
    try:
        yield
    finally:
        with torch.no_grad(), _disable_current_modes():
            for m, (mean, var, count) in zip(bns, saved):
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)


def _keep_convolutions(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    """Keep convolution outputs, except a convolution reading the image itself (≤ 3 channels: a few
    multiply-adds per output, cheaper to recompute than to keep); recompute everything else."""
    keep = op is torch.ops.aten.convolution.default and args[1].shape[1] > 3
    return CheckpointPolicy.MUST_SAVE if keep else CheckpointPolicy.PREFER_RECOMPUTE


KEEP_CONVOLUTIONS = functools.partial(create_selective_checkpoint_contexts, _keep_convolutions)


def run_segment(module: nn.Module, *inputs: torch.Tensor, enabled: bool | str = True, fn=None):
    """``fn(*inputs)`` (default ``module(*inputs)``; ``module`` owns the batch norms ``fn`` runs),
    checkpointed when ``enabled`` and gradients are being recorded; ``enabled="selective"``:
    convolution outputs are kept, everything else is recomputed."""
    fn = fn or module
    if not (enabled and module.training and torch.is_grad_enabled()):
        return fn(*inputs)
    selective = {"context_fn": KEEP_CONVOLUTIONS} if enabled == "selective" else {}
    calls = 0

    def body(*xs):
        nonlocal calls
        calls += 1
        if calls == 1:            # the forward pass
            return fn(*xs)
        with _running_stats_kept(module):   # a recomputation during backward
            return fn(*xs)

    return checkpoint(body, *inputs, use_reentrant=False, **selective)


def set_activation_checkpointing(model: nn.Module, mode: str) -> nn.Module:
    """Set ``mode`` (one of :data:`CHECKPOINTING`) on an :class:`~ldisc.model.LDNet`; returns it."""
    if mode not in CHECKPOINTING:
        raise ValueError(f"unknown engine.activation_checkpointing {mode!r}; one of {CHECKPOINTING}")
    model.encoder.checkpoint = "selective" if mode == "selective" else mode == "all"
    model.decoder.checkpoint = mode in ("decoder", "all")
    model.checkpoint_heads = mode in ("decoder", "all")
    model.chunked_heads = mode == "selective"
    return model
