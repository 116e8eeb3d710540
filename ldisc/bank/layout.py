"""Where the slots of a K-slot FIFO live when it is sharded over W ranks, and how old each slot is.

Strided layout: global slot s lives on rank ``s mod W`` at local row ``s // W``. A global batch
written to consecutive slots therefore lands evenly on all ranks (each writes ≈ n/W rows per step),
and the filled slots {0, …, fill − 1} are a prefix of every rank's rows: rank r holds

    count_r(f) = max(0, ⌈(f − r) / W⌉)

of the first f slots, at most ⌈K/W⌉.

FIFO age: with write pointer ``ptr`` (the next slot to overwrite), the newest entry is slot
``ptr − 1`` and slot s has age ``(ptr − 1 − s) mod K`` (0 = newest); the ``fill`` youngest slots are
valid. The canonical layout of ``f`` entries puts age a at slot ``f − 1 − a`` with ``ptr = f mod K``:
that is how a loaded bank is laid out, whatever world size or capacity it was saved with.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class StridedLayout:
    capacity: int
    world_size: int
    rank: int

    def __post_init__(self):
        if self.capacity < 0 or self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"bad layout {self}")

    def local_count(self, filled: int) -> int:
        """Rows of this rank among global slots [0, filled)."""
        return max(0, -(-(filled - self.rank) // self.world_size))

    @property
    def shard_rows(self) -> int:
        """Rows this rank stores when the bank is full (≤ ⌈K/W⌉)."""
        return self.local_count(self.capacity)

    def global_slots(self, rows: int) -> torch.Tensor:
        """Global slot ids of local rows 0..rows−1."""
        return self.rank + self.world_size * torch.arange(rows)

    def owned(self, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mask of ``slots`` on this rank, their local rows)."""
        mine = slots % self.world_size == self.rank
        return mine, slots[mine] // self.world_size


def shard_bytes(capacity: int, world_size: int, dim: int, bytes_per_value: int = 4) -> int:
    """Bytes of the largest shard (rank 0): ⌈K/W⌉ · dim values plus nothing else K-sized."""
    return StridedLayout(capacity, world_size, 0).shard_rows * dim * bytes_per_value


def slot_ages(slots: torch.Tensor, ptr: int, capacity: int) -> torch.Tensor:
    """Age of each slot (0 = newest) in a FIFO whose next write goes to ``ptr``."""
    return (ptr - 1 - slots) % capacity


def canonical_slots(ages: torch.Tensor, filled: int) -> torch.Tensor:
    """Slot of each age when ``filled`` entries are laid out as slots 0..filled−1, oldest first."""
    return filled - 1 - ages
