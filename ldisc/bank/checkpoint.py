"""Save and load a sharded memory bank in a checkpoint directory, resharding on a new world size.

``save_bank(bank, dir)`` — called by every rank — writes ``bank_rank<r>_of_<W>.pt`` (this rank's
valid rows, their global slot ids, the global write pointer and fill) atomically.
``load_bank(bank, dir)`` — called by every rank, with any world size and capacity — restores the
bank: with the saving run's world size and capacity, this rank's shard as saved (same row order, so
the bank's NCE sums in the same order: a bitwise resume); otherwise it reads every shard of the save,
one file at a time, and keeps the entries of its own new slots: the global FIFO (oldest → newest) is
unchanged; when the capacity shrank, the newest K entries are kept.
No collective is used: the directory must be visible to all ranks (shared storage).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterator

import torch

from ldisc.bank.memory_bank import ShardedMemoryBank

_PATTERN = re.compile(r"bank_rank(\d+)_of_(\d+)\.pt$")


def shard_path(directory: str | Path, rank: int, world_size: int) -> Path:
    return Path(directory) / f"bank_rank{rank}_of_{world_size}.pt"


def save_bank(bank: ShardedMemoryBank, directory: str | Path) -> Path:
    """Write this rank's shard; returns the file written."""
    layout = bank.layout
    path = shard_path(directory, layout.rank, layout.world_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(bank.state_dict(), tmp)
    os.replace(tmp, path)
    return path


def saved_shards(directory: str | Path) -> list[Path]:
    """All shard files of the one save in ``directory`` (rank order); [] if there is none."""
    found = {}
    for p in Path(directory).glob("bank_rank*_of_*.pt"):
        m = _PATTERN.search(p.name)
        if m:
            found[(int(m.group(2)), int(m.group(1)))] = p
    worlds = {w for w, _ in found}
    if len(worlds) > 1:
        raise ValueError(f"{directory}: bank shards of several world sizes {sorted(worlds)}")
    if not worlds:
        return []
    world = worlds.pop()
    missing = [r for r in range(world) if (world, r) not in found]
    if missing:
        raise FileNotFoundError(f"{directory}: bank shards of ranks {missing} (of {world}) are missing")
    return [found[(world, r)] for r in range(world)]


def _read(paths: list[Path]) -> Iterator[dict]:
    for p in paths:
        yield torch.load(p, map_location="cpu", weights_only=True)


def load_bank(bank: ShardedMemoryBank, directory: str | Path) -> int:
    """Fill ``bank`` from the shards saved in ``directory``; returns the global fill (0 if none)."""
    own = shard_path(directory, bank.layout.rank, bank.layout.world_size)
    if own.is_file():
        state = torch.load(own, map_location="cpu", weights_only=True)
        if (state["capacity"], state["world_size"]) == (bank.capacity, bank.layout.world_size):
            bank.load_state_dict(state)
            return bank.fill
    paths = saved_shards(directory)
    if not paths:
        return 0
    return bank.load_shards(_read(paths))

