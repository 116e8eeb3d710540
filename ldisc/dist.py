"""Every collective of ldisc, each an identity in one process (no process group, or a world of one).

``Collective`` (one process) and ``ProcessGroupCollective`` (torch.distributed) expose what the
global-batch objectives need: an all-gather whose backward returns every rank's gradient to the
owner of each row, and a differentiable sum all-reduce (:func:`all_reduce_sum`, also used by the
global batch norm). For the trainer and the data stream: :func:`barrier`, :func:`broadcast_object`
(rank 0's decision on every rank) and :func:`average_over_ranks_` (the shape prior's gradients).
"""
from __future__ import annotations

import torch
import torch.distributed as dist


class _GatherRows(torch.autograd.Function):
    """Concatenate every rank's rows; backward sums all ranks' gradients and keeps this rank's rows."""

    @staticmethod
    def forward(ctx, x, group):
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x, group=group)
        ctx.group, ctx.rank, ctx.rows = group, dist.get_rank(group), x.shape[0]
        return torch.cat(parts, 0)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows], None


class _SumOverRanks(torch.autograd.Function):
    """Sum over ranks; the gradient of a sum over ranks is the sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        out = x.detach().clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def multi_process() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(x: torch.Tensor, group=None) -> torch.Tensor:
    """Sum of ``x`` over the ranks of ``group`` (default: the world), differentiable: backward sums the
    ranks' gradients. ``x`` itself in one process."""
    return _SumOverRanks.apply(x, group) if multi_process() else x


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s ``obj`` (picklable) on every rank."""
    if not multi_process():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def average_over_ranks_(tensors) -> None:
    """Replace each tensor by its mean over the ranks (in place; None entries are skipped)."""
    if not multi_process():
        return
    world = dist.get_world_size()
    for t in tensors:
        if t is not None:
            dist.all_reduce(t)
            t.div_(world)


class Collective:
    """One process: gathering and reducing are identities."""

    rank = 0
    world_size = 1
    group = None

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate ``x`` of all ranks along dim 0 (equal sizes), differentiable."""
        return x

    def all_reduce_sum(self, x: torch.Tensor) -> torch.Tensor:
        """Sum over ranks, differentiable (backward sums the ranks' gradients)."""
        return x

    def all_reduce_detached(self, x: torch.Tensor) -> torch.Tensor:
        return x.detach().clone()

    def offset(self, local_rows: int) -> int:
        """Index of this rank's first row in a gathered tensor."""
        return self.rank * local_rows

    @property
    def process_group(self):
        """The group for code that reads ``None`` as "one process" (``ExtraNegatives``, ``nce``)."""
        return None


class ProcessGroupCollective(Collective):
    """torch.distributed collectives on ``group`` (default: the world)."""

    def __init__(self, group=None):
        if not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialised")
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        return _GatherRows.apply(x.contiguous(), self.group)

    def all_reduce_sum(self, x: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(x, self.group)

    def all_reduce_detached(self, x: torch.Tensor) -> torch.Tensor:
        y = x.detach().clone()
        dist.all_reduce(y, group=self.group)
        return y

    @property
    def process_group(self):
        """``group``, with ``None`` (the world) made explicit: ``None`` means one process to ``nce``."""
        return self.group if self.group is not None else dist.group.WORLD


def default_collective() -> Collective:
    """The world when torch.distributed is initialised with more than one rank, else one process."""
    if multi_process():
        return ProcessGroupCollective()
    return Collective()
