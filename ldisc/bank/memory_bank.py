"""A FIFO of K detached patch vectors sharded over the ranks: extra negatives for the patch NCE.

Every step each rank passes its vectors (the same count n on every rank); the bank behaves as one
FIFO fed the concatenation of all ranks' vectors in rank order (the global batch of W·n vectors),
overwriting the oldest entries. Only the step's vectors are all-gathered; each rank keeps the
entries of its own slots (strided layout, :mod:`ldisc.bank.layout`), at most ⌈K/W⌉ rows.

Used as negatives, the bank adds to the denominator of every query q_i of the step

    Z_i = Σ_{j ≠ i, j ∈ batch} e^{s_ij} + Σ_{b ∈ bank} e^{s_ib},    s = q·x/τ,

and the terms −Σ_b log(1 − e^{s_ib}/Z_i) to loss_i; rank r evaluates its shard for all queries and
the partial sums are combined with all-reduces (:class:`ldisc.objectives.nce.BankNegatives`).
Bank entries are negatives only and carry no gradient. K = 0 disables the bank (the paper).
"""
from __future__ import annotations

from typing import Iterable

import torch

from ldisc.bank.layout import StridedLayout, canonical_slots, slot_ages
from ldisc.dist import Collective
from ldisc.objectives.nce import BankNegatives


class ShardedMemoryBank:
    """``capacity`` (K) vectors of ``dim`` values in a FIFO over ``collective``'s ranks."""

    def __init__(self, capacity: int, dim: int, collective: Collective | None = None,
                 device: torch.device | str = "cpu"):
        self.collective = collective or Collective()
        self.layout = StridedLayout(int(capacity), self.collective.world_size, self.collective.rank)
        self.dim = int(dim)
        self.keys = torch.zeros(self.layout.shard_rows, self.dim, device=device)
        self.ptr = 0          # next global slot to overwrite
        self._fill = 0        # valid entries, globally; valid slots are always 0..fill−1

    # -- sizes -----------------------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return self.layout.capacity

    @property
    def fill(self) -> int:
        return self._fill

    @property
    def fill_ratio(self) -> float:
        return self._fill / self.capacity if self.capacity else 0.0

    @property
    def local_rows(self) -> int:
        """Valid rows of this rank's shard."""
        return self.layout.local_count(self._fill)

    @property
    def device(self) -> torch.device:
        return self.keys.device

    # -- use -------------------------------------------------------------------------------------
    @torch.no_grad()
    def enqueue(self, local_vectors: torch.Tensor) -> None:
        """Append every rank's ``local_vectors`` (n, dim), in rank order; call on all ranks."""
        if self.capacity == 0:
            return
        if local_vectors.ndim != 2 or local_vectors.shape[1] != self.dim:
            raise ValueError(f"expected (n, {self.dim}) vectors, got {tuple(local_vectors.shape)}")
        batch = self.collective.gather(local_vectors.detach().to(self.keys)).detach()
        total = batch.shape[0]
        kept = min(total, self.capacity)                  # a batch larger than K keeps its last K
        start = (self.ptr + total - kept) % self.capacity
        slots = (start + torch.arange(kept, device=self.device)) % self.capacity
        mine, rows = self.layout.owned(slots)
        self.keys[rows] = batch[total - kept:][mine]
        self.ptr = (self.ptr + total) % self.capacity
        self._fill = min(self.capacity, self._fill + total)

    def bank_negatives(self) -> BankNegatives | None:
        """This rank's filled shard as the bank negatives of the patch NCE; None while empty."""
        if self._fill == 0:
            return None
        return BankNegatives(self.keys[:self.local_rows], self.collective.process_group)

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """This rank's valid rows with their global slot ids, and the global FIFO position."""
        rows = self.local_rows
        return {"keys": self.keys[:rows].detach().cpu().clone(), "slots": self.layout.global_slots(rows),
                "ptr": self.ptr, "fill": self._fill, "capacity": self.capacity, "dim": self.dim,
                "world_size": self.layout.world_size, "rank": self.layout.rank}

    def load_state_dict(self, state: dict) -> None:
        """Load this rank's own saved shard (same capacity, world size and rank), as it was."""
        layout = (state["capacity"], state["world_size"], state["rank"], state["dim"])
        if layout != (self.capacity, self.layout.world_size, self.layout.rank, self.dim):
            raise ValueError("bank layout changed: load every rank's shard with load_shards / load_bank")
        rows = state["keys"].shape[0]
        self.keys[:rows] = state["keys"].to(self.keys)
        self.ptr, self._fill = int(state["ptr"]), int(state["fill"])

    def load_shards(self, states: Iterable[dict]) -> int:
        """Rebuild this rank's shard from saved shards of any world size and capacity.

        ``states`` must be all the shards of one save (they may be read lazily, one at a time).
        Entries keep their FIFO order; the ``min(fill, K)`` newest are laid out canonically
        (:mod:`ldisc.bank.layout`). Returns the global fill after loading.
        """
        position, rows_seen = None, 0
        for state in states:
            if state["dim"] != self.dim:
                raise ValueError(f"saved bank has dim {state['dim']}, this one {self.dim}")
            here = (state["ptr"], state["fill"], state["capacity"])
            if position not in (None, here):
                raise ValueError(f"shards from different saves: {position} vs {here}")
            position = here
            rows_seen += state["keys"].shape[0]
            if self.capacity == 0:
                continue
            ptr, filled, capacity = here
            new_fill = min(filled, self.capacity)
            ages = slot_ages(state["slots"], ptr, capacity)
            young = ages < new_fill
            slots = canonical_slots(ages[young], new_fill)
            mine, rows = self.layout.owned(slots)
            self.keys[rows.to(self.device)] = state["keys"][young][mine].to(self.keys)
        if position is None:
            return self._fill
        if rows_seen != position[1]:
            raise ValueError(f"saved shards hold {rows_seen} entries, the bank had {position[1]}: shards missing")
        self._fill = min(position[1], self.capacity)
        self.ptr = self._fill % self.capacity if self.capacity else 0
        return self._fill
