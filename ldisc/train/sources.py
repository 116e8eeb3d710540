"""Where a trainer's batches come from.

``data.source``: ``synthetic`` (procedural images, the default), ``noise`` (smooth random images:
no generator cost, for tests and benchmarks) or ``shards`` (the streaming shard loader,
:mod:`ldisc.data`). Every source offers ``next_batch()``, ``state_dict()``, ``load_state_dict()``.
"""
from __future__ import annotations

from omegaconf import DictConfig

from ldisc.train.env import DistInfo
from ldisc.train.synthetic_source import noise_pairs, synthetic_pairs

SOURCES = ("synthetic", "noise", "shards")


def build_data_source(cfg: DictConfig, info: DistInfo):
    d, t = cfg.data, cfg.train
    seed, bs = int(cfg.seed), int(t.batch_size)
    if d.source == "synthetic":
        return synthetic_pairs(d.modality, d.image_size, d.size, d.pool, bs, seed, info.rank)
    if d.source == "noise":
        return noise_pairs(d.image_size, d.size, d.pool, bs, seed, info.rank)
    if d.source == "shards":
        return _shard_source(cfg, info)
    raise ValueError(f"unknown data.source {d.source!r}; one of {SOURCES}")


def _shard_source(cfg: DictConfig, info: DistInfo):
    try:
        from ldisc.data.loader import StreamLoader
    except ImportError as err:
        raise ValueError("data.source=shards needs ldisc.data.loader.StreamLoader, not available in this "
                         f"checkout ({err})") from err
    loader = StreamLoader.from_config(cfg, rank=info.rank, world_size=info.world_size)
    loader.plan()              # a missing dataset or shard object stops the job here, before any step
    return loader
