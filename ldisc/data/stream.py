"""The per-process part of the loader: an IterableDataset that produces one rank's batches
of one epoch (or the rest of it) — in a DataLoader worker or in the main process.

It receives an :class:`EpochPlan` (computed once in the main process by
:class:`ldisc.data.loader.StreamLoader`), reads the samples of its steps by random access,
decodes them and builds LD views. A sample that cannot be read or decoded is replaced by
the nearest good image of the same batch (or a black image if none) and counted with its
shard named; the loader stops the job when an epoch's share of them passes
``max_bad_fraction`` (:class:`ldisc.data.loader.StreamLoader`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from . import order as order_mod
from .samples import SampleReader, SampleTable
from .shard_cache import CachedSampleReader, open_reader, upcoming_shards
from .store import open_store, take_retries

OUTPUTS = ("views", "images", "ids", "decoded")


@dataclass
class EpochPlan:
    """What one rank reads in (the rest of) one epoch."""

    version: int
    epoch: int
    start: int                 # global offset already consumed when this plan starts
    order: np.ndarray          # the epoch's global order: rows of the sample table
    world_size: int
    rank: int
    per_rank: int              # samples per rank and step (2 × batch size)

    @property
    def n_steps(self) -> int:
        return order_mod.steps_in_epoch(len(self.order), self.start, self.world_size, self.per_rank)

    @property
    def dropped(self) -> int:
        """Samples at the end of the epoch no rank will see (remainder of the split)."""
        return len(self.order) - self.start - self.n_steps * self.world_size * self.per_rank


def pair_seed(seed: int, epoch: int, position: int) -> int:
    """The seed of the views of the pair starting at global ``position`` (< 2**63)."""
    state = np.random.SeedSequence([int(seed), int(epoch), int(position), 0x71E4]).generate_state(2, np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def pair_generator(seed: int, epoch: int, position: int) -> torch.Generator:
    """The torch generator of the views of the pair starting at global ``position``."""
    return torch.Generator().manual_seed(pair_seed(seed, epoch, position))


class LDStream(IterableDataset):
    """One rank's batches for an :class:`EpochPlan`; shards its steps over loader workers.

    ``output``: 'views' (LD view tensors, see ``ldisc.views``), 'images' (decoded PIL
    images), 'decoded' (uint8 images and one view seed per pair, for views made on the training
    device: ``ldisc.views_batch``) or 'ids' (metadata only, nothing read). Every batch carries ``positions``
    (int64 global positions in the epoch order), ``sample_ids``, ``step``, ``epoch``,
    ``version`` (with ``version_samples``, its sample count), ``corrupt`` (images replaced in this batch; when
    > 0, ``bad_shards`` names the shard of each replaced image) and ``store_retries`` (object-store reads this
    process retried since its previous batch). With a shard cache, ``shard_cache`` counts its events since
    the last batch.
    """

    def __init__(self, dataset: str, table: SampleTable, plan: EpochPlan, *, seed: int,
                 output: str = "views", view_config: Any = None, endpoint_url: str | None = None,
                 fallback_size: int = 512, cache: Any = None):
        if output not in OUTPUTS:
            raise ValueError(f"output {output!r}: one of {OUTPUTS}")
        self.dataset, self.table, self.plan, self.seed = dataset, table, plan, seed
        self.output, self.view_config, self.endpoint_url = output, view_config, endpoint_url
        self.fallback_size = fallback_size
        self.cache = cache                 # ldisc.data.shard_cache.CacheSpec: whole shards of a remote store

    def _worker(self) -> tuple[int, int]:
        info = get_worker_info()
        return (0, 1) if info is None else (info.id, info.num_workers)

    def _images(self, reader: SampleReader, rows: np.ndarray) -> tuple[list[Image.Image], int]:
        images: list[Image.Image | None] = []
        for row in rows:
            try:
                images.append(reader.image(int(row)))
            except Exception:
                images.append(None)
        self._decoded = [im is not None for im in images]
        bad = sum(1 for im in images if im is None)
        if bad:
            good = [i for i, im in enumerate(images) if im is not None]
            for i, im in enumerate(images):
                if im is None:
                    images[i] = (images[min(good, key=lambda g: (abs(g - i), g))] if good else
                                 Image.new("L", (self.fallback_size, self.fallback_size), 0))
        return images, bad

    def _views(self, images: list[Image.Image], positions: np.ndarray) -> dict:
        from ldisc.views import ViewConfig, collate_views, make_views

        cfg = self.view_config or ViewConfig()
        pairs = [make_views(images[i], images[i + 1], cfg,
                            pair_generator(self.seed, self.plan.epoch, int(positions[i])))
                 for i in range(0, len(images) - 1, 2)]
        return collate_views(pairs)

    def batch(self, reader: SampleReader | None, step: int) -> dict:
        """Batch ``step`` (relative to the plan start) of this rank."""
        p = self.plan
        positions = order_mod.rank_step_positions(p.start, step, p.world_size, p.rank, p.per_rank)
        rows = p.order[positions]
        out: dict = {"positions": torch.from_numpy(positions), "sample_ids": list(self.table.sample_id[rows]),
                     "step": step, "epoch": p.epoch, "version": p.version, "version_samples": len(self.table),
                     "corrupt": 0}
        if self.output == "ids":
            return out
        images, out["corrupt"] = self._images(reader, rows)
        if out["corrupt"]:
            out["bad_shards"] = [self.table.shard_keys[self.table.shard_index[int(row)]]
                                 for row, ok in zip(rows, self._decoded) if not ok]
        out["store_retries"] = take_retries()      # read retries of this process's store since its last batch
        if self.output == "images":
            out["images"] = images
        elif self.output == "decoded":     # data.views_device=accelerator: views made by the trainer
            from ldisc.views import ViewConfig
            from ldisc.views_batch import decoded_batch

            seeds = [pair_seed(self.seed, p.epoch, int(q)) for q in positions[0::2]]
            out.update(decoded_batch(images, seeds, self.view_config or ViewConfig()))
        else:
            out.update(self._views(images, positions))
        return out

    def __iter__(self):
        worker, num_workers = self._worker()
        reader = None
        steps = order_mod.worker_steps(self.plan.n_steps, num_workers, worker)
        if self.output != "ids":
            reader = open_reader(open_store(self.dataset, self.endpoint_url), self.table, self.cache,
                                 lambda: upcoming_shards(self.table, self.plan, steps))
        try:
            for step in steps:
                batch = self.batch(reader, step)
                if isinstance(reader, CachedSampleReader):
                    batch["shard_cache"] = reader.cache.take_stats()
                yield batch
        finally:
            if reader is not None:
                reader.close()
