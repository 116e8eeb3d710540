"""The data source of a composed ``ldisc-pretrain`` config (every one a :class:`~ldisc.data.source.DataSource`).

``data.source``: ``synthetic`` (procedural images, the default), ``noise`` (smooth random images:
no generator cost, for tests and benchmarks) or ``shards`` (the streaming shard loader,
:class:`ldisc.data.loader.StreamLoader`).
"""
from __future__ import annotations

import dataclasses
import sys

from omegaconf import DictConfig

from ldisc.data.pairs import noise_pairs, synthetic_pairs
from ldisc.views import view_config

SOURCES = ("synthetic", "noise", "shards")


def build_data_source(cfg: DictConfig, rank: int, world_size: int, split: str = "train", device=None):
    """The ``split`` (train | val) of ``data`` for ``rank`` of ``world_size``: with ``train.val_fraction`` > 0 the
    validation samples are held out of training (synthetic/noise: the last images of the pool; shards: by
    sample-id hash). ``device``: where ``data.views_device=accelerator`` makes the views (default: cpu)."""
    d, t = cfg.data, cfg.train
    seed, bs = int(cfg.seed), int(t.batch_size)
    holdout = float(t.val_fraction)
    if d.source == "synthetic":
        return synthetic_pairs(d.modality, d.image_side, view_config(cfg), d.pool, bs, seed, rank, holdout, split)
    if d.source == "noise":
        return noise_pairs(d.image_side, view_config(cfg), d.pool, bs, seed, rank, holdout, split)
    if d.source == "shards":
        from ldisc.data.loader import StreamLoader

        loader = StreamLoader.from_config(d, batch_size=bs, seed=seed, view_config=view_config(cfg), holdout=holdout,
                                          rank=rank, world_size=world_size, split=split)
        loader.plan()          # a missing dataset or shard object stops the job here, before any step
        if loader.output == "decoded":         # data.views_device=accelerator: views on the training device
            from ldisc.views_batch import DeviceViews

            return DeviceViews(loader, view_config(cfg), device or "cpu")
        return loader
    raise ValueError(f"unknown data.source {d.source!r}; one of {SOURCES}")


def build_validation_source(cfg: DictConfig, rank: int, world_size: int):
    """The held-out validation source, or None when ``train.val_fraction`` is 0."""
    if not float(cfg.train.val_fraction) > 0:
        return None
    source = build_data_source(cfg, rank, world_size, "val")
    start = source.position()
    try:
        source.next_batch()
    except RuntimeError as err:      # a split smaller than one batch per rank: say so, train without it
        if rank == 0:
            print(f"ldisc: validation off: train.val_fraction={cfg.train.val_fraction} holds out too few "
                  f"samples ({err})", file=sys.stderr)
        return None
    resolved = getattr(source.position(), "manifest_version", None)
    if resolved is not None and start.manifest_version is None:
        # pin the manifest version the probe resolved: validation reads the same batches every time, even
        # after new shards join the training stream (a later version holds out other, maybe too few, samples)
        start = dataclasses.replace(start, manifest_version=resolved)
    source.seek(start)
    return source
