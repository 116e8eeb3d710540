"""Where a trainer's batches come from.

``data.source``: ``synthetic`` (procedural images, the default), ``noise`` (smooth random images:
no generator cost, for tests and benchmarks) or ``shards`` (the streaming shard loader,
:mod:`ldisc.data`). Every source offers ``next_batch()``, ``state_dict()``, ``load_state_dict()``.
"""
from __future__ import annotations

import sys

from omegaconf import DictConfig

from ldisc.train.env import DistInfo
from ldisc.train.synthetic_source import noise_pairs, synthetic_pairs
from ldisc.views import view_config

SOURCES = ("synthetic", "noise", "shards")


def build_data_source(cfg: DictConfig, info: DistInfo, split: str = "train"):
    """The ``split`` (train | val) of ``data``: with ``train.val_fraction`` > 0 the validation samples
    are held out of training (synthetic/noise: the last images of the pool; shards: by sample-id hash)."""
    d, t = cfg.data, cfg.train
    seed, bs = int(cfg.seed), int(t.batch_size)
    holdout = float(t.val_fraction)
    if d.source == "synthetic":
        return synthetic_pairs(d.modality, d.image_side, view_config(cfg), d.pool, bs, seed, info.rank, holdout, split)
    if d.source == "noise":
        return noise_pairs(d.image_side, view_config(cfg), d.pool, bs, seed, info.rank, holdout, split)
    if d.source == "shards":
        return _shard_source(cfg, info, split)
    raise ValueError(f"unknown data.source {d.source!r}; one of {SOURCES}")


def build_validation_source(cfg: DictConfig, info: DistInfo):
    """The held-out validation source, or None when ``train.val_fraction`` is 0."""
    if not float(cfg.train.val_fraction) > 0:
        return None
    source = build_data_source(cfg, info, "val")
    start = source.state_dict()
    try:
        source.next_batch()
    except RuntimeError as err:      # a split smaller than one batch per rank: say so, train without it
        if info.rank == 0:
            print(f"ldisc: validation off: train.val_fraction={cfg.train.val_fraction} holds out too few "
                  f"samples ({err})", file=sys.stderr)
        return None
    source.load_state_dict(start)
    return source


def _shard_source(cfg: DictConfig, info: DistInfo, split: str = "train"):
    try:
        from ldisc.data.loader import StreamLoader
    except ImportError as err:
        raise ValueError("data.source=shards needs ldisc.data.loader.StreamLoader, not available in this "
                         f"checkout ({err})") from err
    loader = StreamLoader.from_config(cfg, rank=info.rank, world_size=info.world_size, split=split)
    loader.plan()              # a missing dataset or shard object stops the job here, before any step
    return loader
