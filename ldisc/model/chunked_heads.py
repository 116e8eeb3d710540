"""The two heads image-chunk by image-chunk (``engine.activation_checkpointing=selective``).

A head is conv → batch norm → ReLU → conv → finish (L2 normalisation, or sigmoid and L1 over the
clusters). It works at full resolution, so its activations are the largest tensors of a step (at
448 px, batch 4: 514 MB per 32-channel map, a dozen of them alive at the plain step's peak). Here only
each head's first convolution output is held for the whole batch:

1. per chunk of images, the decoder's join (upsampling and concatenation) and the heads' first
   convolutions run as one selective segment: their outputs are kept, the joined feature is
   recomputed during backward;
2. each head's batch-norm statistics over the whole batch (every rank's under a synchronised batch
   norm), differentiable, with the running statistics updated once — as the plain batch norm does;
3. per chunk, checkpointed: normalise with those statistics, ReLU, the last convolution, finish, and
   ``reduce(embedding, masks)`` — the per-image quantities the losses read
   (:class:`ldisc.objectives.reductions.PixelReductions`). A chunk's full-resolution tensors live only
   while that chunk runs, in the forward pass and again in its backward.

The cost is the heads' last convolutions computed twice. The result equals the plain heads' up to float
summation order (tests/test_selective_checkpointing.py). Convolutions run as module calls (DeepSpeed
ZeRO-3 gathers their weights on those); the batch norms' own weights are read directly, which ZeRO-3
serves from its persisted small parameters (``stage3_param_persistence_threshold``).
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn

from ldisc.model.batch_stats import batch_statistics, normalise, spans_ranks, update_running_statistics
from ldisc.model.checkpointing import run_segment

CHUNKS = 5     # one chunk per view (x1_1, x1_2, x2_1, x2_2, mix) of a training batch


def _uncached_autocast(device: str):
    """The current autocast without its weight-cast cache: selective checkpointing replays each chunk's
    operations exactly, and a cache filled by the first chunk would leave the casts out of the others."""
    if not torch.is_autocast_enabled(device):
        return contextlib.nullcontext()
    return torch.autocast(device, dtype=torch.get_autocast_dtype(device), cache_enabled=False)


def heads_by_chunks(net: nn.Module, x: torch.Tensor, full: torch.Tensor,
                    reduce: Callable[[torch.Tensor, torch.Tensor | None], dict], chunks: int = CHUNKS) -> dict:
    """``reduce`` of the heads' outputs for the decoder's last stage output ``x`` and the full-resolution
    skip feature ``full``, computed chunk by chunk and concatenated along the batch."""
    heads = [net.embed] + ([net.cluster] if net.cluster is not None else [])
    first = [head.net[0] for head in heads]         # conv_bn_relu: (conv, batch norm, ReLU)

    def first_convolutions(x, full):
        with _uncached_autocast(x.device.type):
            h = net.decoder.join(x, full)
            return tuple(block[0](h) for block in first)

    per_chunk = max(1, -(-x.shape[0] // chunks))
    pieces = [run_segment(first[0][0], xs, fs, enabled="selective", fn=first_convolutions)
              for xs, fs in zip(x.split(per_chunk), full.split(per_chunk))]     # [(c1 per head)] per chunk
    stats = []
    for i, block in enumerate(first):
        mean, var, count = batch_statistics([p[i] for p in pieces], spans_ranks(block[1]))
        update_running_statistics(block[1], mean, var, count)
        stats.append((mean, var))

    def tail(*args):
        outs = []
        for head, block, c, (mean, var) in zip(heads, first, args, stats):
            outs.append(head.finish(head.net[1](block[2](normalise(c, block[1], mean, var)))))
        return reduce(*outs, *([None] * (2 - len(outs))))

    parts = [run_segment(heads[0].net[1], *p, fn=tail) for p in pieces]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
