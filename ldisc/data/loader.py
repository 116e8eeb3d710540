"""``StreamLoader``: the training-side data stream — epochs, manifest versions, position.

    loader = StreamLoader("s3://bucket/ds", batch_size=4, seed=0, num_workers=2,
                          view_config=ViewConfig(view_side=448))
    loader.seek(saved_position)                   # optional: resume exactly
    for epoch in range(epochs):
        for batch in loader:                      # the (rest of the) current epoch
            step(batch); saved_position = loader.position()

The position (:class:`~ldisc.data.source.StreamPosition`) is essentially ``{epoch, manifest_version,
consumed}``: ``consumed`` counts the samples of the epoch's global order that all ranks together have
taken (a multiple of world_size × 2 × batch_size of the run that saved it). Resuming re-splits the rest of the
epoch's global order over the current world size, so the global sample sequence is the
same whatever the world size. With ``version='latest'`` the newest manifest version is
looked up at every epoch boundary (rank 0 decides and broadcasts it when
torch.distributed is initialised) so newly ingested shards join without a restart; an
epoch always finishes on the version it started with.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from typing import Any

import torch

from ldisc.dist import broadcast_object

from . import order as order_mod
from .manifest import latest_version, read_manifest
from .samples import SampleTable
from .source import StreamPosition
from .shard_cache import CacheSpec, checksums_of
from .store import open_store
from .stream import EpochPlan, LDStream

log = logging.getLogger(__name__)


class BadDataError(RuntimeError):
    """Too many samples of an epoch could not be read or decoded, or shard objects are missing."""


def _dist_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))


class StreamLoader:
    """Deterministic, resumable, elastic stream of LD batches for one rank.

    Args:
        dataset: dataset path or ``s3://bucket/prefix``.
        batch_size: pairs per rank and step; a step consumes 2 × batch_size images per rank.
        seed: order and view seed.
        version: manifest version (int, fixed) or 'latest' (re-read at each epoch start).
        weights: mixing weights {'site/modality' fnmatch pattern: weight}; None = each
            sample once per epoch.
        epoch_samples: epoch length when weights are given (default: selected samples).
        shuffle_window: samples permuted together after the shard-level shuffle.
        num_workers: DataLoader worker processes (0 = in this process).
        world_size, rank: default from torch.distributed, else $WORLD_SIZE/$RANK, else 1/0.
        output: 'views' (default), 'images' or 'ids' (see :class:`LDStream`).
        view_config: ``ldisc.views.ViewConfig`` (default ViewConfig()).
        holdout, split: with ``holdout`` > 0, samples whose id hashes below it form the validation
            split (``order.holdout_mask``); ``split`` train | val | all picks what this loader reads.
        max_bad_fraction: stop with :class:`BadDataError` once more than this share of the rank's
            samples of an epoch had to be replaced (None: never stop; replacements are still
            counted and logged with their shard).
        cache_dir, cache_limit_gb, cache_prefetch: with ``cache_dir``, a remote dataset is read as whole
            shards downloaded ahead of use into a bounded local cache (``ldisc.data.shard_cache``);
            without, each sample is one ranged GET.
    """

    def __init__(self, dataset: str, batch_size: int, *, seed: int = 0, version: int | str = "latest",
                 weights: dict[str, float] | None = None, epoch_samples: int | None = None,
                 shuffle_window: int = 2048, num_workers: int = 0, world_size: int | None = None,
                 rank: int | None = None, output: str = "views", view_config: Any = None,
                 prefetch_factor: int = 2, endpoint_url: str | None = None, holdout: float = 0.0,
                 split: str = "all", max_bad_fraction: float | None = 0.01, cache_dir: str | None = None,
                 cache_limit_gb: float = 20.0, cache_prefetch: int = 2):
        dist_world, dist_rank = _dist_world()
        self.world_size = world_size if world_size is not None else dist_world
        self.rank = rank if rank is not None else dist_rank
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside world size {self.world_size}")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.dataset, self.batch_size, self.seed = str(dataset), batch_size, int(seed)
        self.version, self.weights, self.epoch_samples = version, weights, epoch_samples
        self.shuffle_window, self.num_workers, self.output = shuffle_window, num_workers, output
        self.view_config, self.prefetch_factor, self.endpoint_url = view_config, prefetch_factor, endpoint_url
        if split not in order_mod.SPLITS or not 0 <= holdout < 1:
            raise ValueError(f"split must be one of {order_mod.SPLITS} and holdout in [0, 1), got {split!r}, {holdout}")
        self.holdout, self.split = float(holdout), split
        self.store = open_store(self.dataset, endpoint_url)
        self.epoch, self.consumed, self.epoch_version = 0, 0, None
        self.corrupt_samples = 0          # images replaced because they could not be decoded
        self.dropped_samples = 0          # epoch tails no rank saw (split remainder)
        self._tables: dict[int, SampleTable] = {}
        self._checksums: dict[str, tuple[str, int]] = {}   # shard key → (sha256, bytes) of the table's version
        self._batches = None              # live iterator behind next_batch()
        if max_bad_fraction is not None and not 0 <= max_bad_fraction <= 1:
            raise ValueError(f"max_bad_fraction must be in [0, 1] or null, got {max_bad_fraction}")
        self.max_bad_fraction = max_bad_fraction
        self.epoch_bad: Counter = Counter()  # replaced samples of the current epoch, by shard
        self._checked_versions: set[int] = set()
        self.cache_dir, self.cache_limit_gb, self.cache_prefetch = cache_dir, float(cache_limit_gb), int(cache_prefetch)
        self.shard_cache_stats: Counter = Counter()     # shard-cache events of all workers (CACHE_EVENTS)

    @classmethod
    def from_config(cls, data, *, batch_size: int, seed: int, view_config: Any, holdout: float = 0.0,
                    rank: int | None = None, world_size: int | None = None, split: str = "train") -> "StreamLoader":
        """From the ``data`` group (configs/data/shards.yaml: dataset, version, weights, epoch_samples,
        shuffle_window, num_workers, prefetch_factor, endpoint_url, max_bad_fraction) and the run's batch
        size, seed, views and held-out fraction (``split``: train | val; the validation stream runs in this
        process, without workers); ``views_device`` (accelerator: the workers only decode) and the shard cache
        (``cache_dir``, ``cache_limit_gb``, ``cache_prefetch``)."""
        from ldisc.views_batch import check_views_device

        weights = {str(k): float(v) for k, v in data.weights.items()} if data.weights else None
        on_device = check_views_device(str(data.views_device)) == "accelerator" and split == "train"
        return cls(str(data.dataset), int(batch_size), seed=int(seed), version=data.version, weights=weights,
                   output="decoded" if on_device else "views",
                   epoch_samples=data.epoch_samples, shuffle_window=int(data.shuffle_window),
                   num_workers=int(data.num_workers) if split == "train" else 0, world_size=world_size, rank=rank,
                   view_config=view_config, prefetch_factor=int(data.prefetch_factor),
                   endpoint_url=data.endpoint_url, holdout=float(holdout), split=split,
                   max_bad_fraction=data.max_bad_fraction, cache_dir=data.cache_dir,
                   cache_limit_gb=float(data.cache_limit_gb), cache_prefetch=int(data.cache_prefetch))

    def next_batch(self) -> dict:
        """The next batch of the endless stream (epochs follow each other); the trainer's interface."""
        for _ in range(2):   # at most one epoch boundary between two batches
            if self._batches is None:
                self._batches = iter(self)
            try:
                return next(self._batches)
            except StopIteration:
                self._batches = None
        raise RuntimeError(f"dataset {self.dataset}: an epoch yields no batch for world size {self.world_size} "
                           f"and batch size {self.batch_size} (too few samples)")

    @property
    def per_rank(self) -> int:
        return 2 * self.batch_size

    # -- position ---------------------------------------------------------------------
    def position(self) -> StreamPosition:
        """Where this rank is (tiny; JSON in a checkpoint, :mod:`ldisc.data.source`)."""
        return StreamPosition(self.seed, self.epoch, self.epoch_version, self.consumed, self.corrupt_samples,
                              self.dropped_samples, dict(self.epoch_bad))

    def seek(self, position: StreamPosition) -> None:
        """Continue from ``position`` (any world size and batch size; same seed required)."""
        if not isinstance(position, StreamPosition):
            raise ValueError(f"the shard stream cannot continue from a {position.KIND} position (data.source changed?)")
        if position.seed != self.seed:
            raise ValueError(f"position was saved with seed {position.seed}, loader has {self.seed}")
        if position.consumed and position.manifest_version is None:
            raise ValueError("a mid-epoch position needs its manifest_version")
        self._batches = None
        self.epoch, self.consumed, self.epoch_version = position.epoch, position.consumed, position.manifest_version
        self.corrupt_samples, self.dropped_samples = position.corrupt_samples, position.dropped_samples
        self.epoch_bad = Counter(position.epoch_bad_by_shard)

    # -- planning ---------------------------------------------------------------------
    def _table(self, version: int) -> SampleTable:
        if version not in self._tables:
            manifest = read_manifest(self.store, version)
            self._tables = {version: SampleTable.from_manifest(manifest)}
            self._checksums = checksums_of(manifest)      # per shard, for the shard cache's downloads
        return self._tables[version]

    def _check_shards(self, version: int) -> None:
        """Every shard object the version's manifest names exists (once per version)."""
        if version in self._checked_versions:
            return
        missing = [k for k in self._table(version).shard_keys if not self.store.exists(k)]
        if missing:
            raise BadDataError(f"dataset {self.dataset} version {version}: {len(missing)} shard object(s) missing: "
                               f"{', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}; re-ingest or restore them")
        self._checked_versions.add(version)

    def _count_bad(self, batch: dict, plan: EpochPlan) -> None:
        """Count a batch's replaced samples by shard, log them, stop past ``max_bad_fraction``."""
        shards = Counter(batch.get("bad_shards", []))
        self.epoch_bad.update(shards)
        total = sum(self.epoch_bad.values())
        for shard, n in sorted(shards.items()):
            log.warning("rank %d epoch %d: %d undecodable sample(s) from %s replaced (%d this epoch)",
                        self.rank, plan.epoch, n, shard, total)
        rank_samples = len(plan.order) / plan.world_size
        if self.max_bad_fraction is not None and total > self.max_bad_fraction * rank_samples:
            worst = ", ".join(f"{k} ({n})" for k, n in self.epoch_bad.most_common(5))
            raise BadDataError(f"dataset {self.dataset}: {total} of this rank's {rank_samples:.0f} samples in epoch "
                               f"{plan.epoch} could not be read or decoded, more than data.max_bad_fraction="
                               f"{self.max_bad_fraction}; shards: {worst}. Run `ldisc-shard verify`.")

    def epoch_order(self, version: int, epoch: int):
        """The global order (rows of the version's sample table) of ``epoch``."""
        table = self._table(version)
        rows = order_mod.select(table.group_index, table.groups, self.seed, epoch,
                                self.weights, self.epoch_samples)
        if self.split != "all" and self.holdout > 0:        # train.val_fraction: a held-out validation split
            held = order_mod.holdout_mask(table.sample_id, self.holdout)
            rows = rows[held[rows] == (self.split == "val")]
        return order_mod.shuffle(rows, table.shard_index, self.seed, epoch, self.shuffle_window)

    def plan(self) -> EpochPlan:
        """The plan of the rest of the current epoch (resolves the version at its start)."""
        if self.epoch_version is None:
            wanted = latest_version(self.store) if self.version == "latest" else int(self.version)
            self.epoch_version = int(broadcast_object(wanted))
        if self.epoch_version == 0:
            raise FileNotFoundError(f"dataset {self.dataset} has no committed manifest version (not an ldisc dataset, "
                                    "or nothing ingested yet: see ldisc-shard ingest)")
        self._check_shards(self.epoch_version)
        order = self.epoch_order(self.epoch_version, self.epoch)
        if self.consumed > len(order):
            raise ValueError(f"position {self.consumed} beyond the {len(order)} samples of epoch {self.epoch}")
        return EpochPlan(self.epoch_version, self.epoch, self.consumed, order,
                         self.world_size, self.rank, self.per_rank)

    def steps_remaining(self) -> int:
        """Steps left in the current epoch (equal on every rank)."""
        return self.plan().n_steps

    def stream(self, plan: EpochPlan) -> LDStream:
        size = getattr(self.view_config, "view_side", 512)
        table, cache = self._table(plan.version), None
        if self.cache_dir:                 # whole shards of a remote store in a local cache (shard_cache)
            cache = CacheSpec(str(self.cache_dir), int(self.cache_limit_gb * 1e9), self.cache_prefetch,
                              self._checksums)
        return LDStream(self.dataset, table, plan, seed=self.seed, output=self.output,
                        view_config=self.view_config, endpoint_url=self.endpoint_url, fallback_size=size,
                        cache=cache)

    # -- iteration --------------------------------------------------------------------
    def __iter__(self):
        """Yield the remaining batches of the current epoch, then move to the next epoch."""
        plan = self.plan()
        stream = self.stream(plan)
        if self.num_workers > 0 and plan.n_steps > 0:
            batches = torch.utils.data.DataLoader(
                stream, batch_size=None, num_workers=self.num_workers,
                prefetch_factor=self.prefetch_factor, persistent_workers=False)
        else:
            batches = stream
        expected = 0
        for batch in batches:
            if batch["step"] != expected:  # DataLoader hands out worker outputs round-robin
                raise RuntimeError(f"batch order broken: got step {batch['step']}, expected {expected}")
            expected += 1
            self.consumed += self.world_size * self.per_rank
            self.corrupt_samples += int(batch["corrupt"])
            self.shard_cache_stats.update(batch.get("shard_cache") or {})
            if batch["corrupt"]:
                self._count_bad(batch, plan)
            yield batch
        self.dropped_samples += plan.dropped
        self.epoch, self.consumed, self.epoch_version = self.epoch + 1, 0, None
        self.epoch_bad.clear()
