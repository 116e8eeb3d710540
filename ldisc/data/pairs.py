"""In-memory batches of LD views from a fixed pool of images — the default data source.

The pool is generated once from ``seed`` (procedural fundus/X-ray images from :mod:`ldisc.synth`, or
smooth random noise for benchmarks and tests); the pairs of step t on rank r are drawn from a
generator seeded by (seed, t, r), so a batch is a pure function of the step: the position is
:class:`~ldisc.data.source.PairPosition` ``(step=t)`` and resuming is exact. A
:class:`~ldisc.data.source.DataSource`, like the shard stream.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from ldisc.data.source import SAMPLE_IDS, PairPosition
from ldisc.views import ViewConfig, make_views_batch, pil_to_tensor


def holdout_split(images: torch.Tensor, fraction: float, split: str) -> torch.Tensor:
    """The last ``max(2, round(fraction · pool))`` images are the validation split (``train.val_fraction``)."""
    if fraction <= 0 or split == "all":
        return images
    n_val = max(2, round(fraction * len(images)))
    if len(images) - n_val < 2:
        raise ValueError(f"train.val_fraction={fraction} leaves fewer than 2 of {len(images)} images to train on")
    return images[-n_val:] if split == "val" else images[:-n_val]


@lru_cache(maxsize=2)
def synth_pool(modality: str, image_size: int, pool: int, seed: int) -> torch.Tensor:
    from ldisc import synth

    samples = synth.generate_many(modality, pool, size=image_size, seed=seed)
    return torch.stack([pil_to_tensor(synth.to_pil(s)) for s in samples])


def noise_pool(image_size: int, pool: int, seed: int) -> torch.Tensor:
    """Smooth RGB noise in [0, 1]: bilinear upsampling of an 8×8 random grid plus fine noise."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(pool, 3, 8, 8, generator=gen)
    smooth = F.interpolate(coarse, size=(image_size, image_size), mode="bilinear", align_corners=False)
    fine = torch.rand(pool, 3, image_size, image_size, generator=gen)
    return (0.8 * smooth + 0.2 * fine).clamp(0, 1)


class PairSource:
    """Views are made on the CPU (their generator is a CPU ``torch.Generator``); the trainer moves the
    batch to the accelerator."""

    def __init__(self, images: torch.Tensor, view_size: int | ViewConfig, batch_size: int, seed: int = 0,
                 rank: int = 0):
        if len(images) < 2:
            raise ValueError(f"data.pool must be ≥ 2 images, got {len(images)}")
        self.images = images.cpu()
        self.view_cfg = view_size if isinstance(view_size, ViewConfig) else ViewConfig(view_side=view_size)
        self.batch_size, self.seed, self.rank = batch_size, seed, rank
        self.step = 0

    def _generator(self) -> torch.Generator:
        state = np.random.SeedSequence([self.seed, self.step, self.rank]).generate_state(2, np.uint64)
        return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))

    def next_batch(self) -> dict:
        gen = self._generator()
        idx = torch.randperm(len(self.images), generator=gen)[: 2 * self.batch_size]
        if len(idx) < 2 * self.batch_size:   # small pool: sample with replacement
            idx = torch.randint(0, len(self.images), (2 * self.batch_size,), generator=gen)
        batch = make_views_batch(self.images[idx[0::2]], self.images[idx[1::2]], self.view_cfg, gen)
        batch[SAMPLE_IDS] = [f"step{self.step}/rank{self.rank}/pool{int(i)}" for i in idx]
        self.step += 1
        return batch

    def position(self) -> PairPosition:
        return PairPosition(self.step)

    def seek(self, position: PairPosition) -> None:
        if not isinstance(position, PairPosition):
            raise ValueError(f"a pool source cannot continue from a {position.KIND} position (data.source changed?)")
        self.step = int(position.step)


def synthetic_pairs(modality: str, image_size: int, view_size: int | ViewConfig, pool: int, batch_size: int,
                    seed: int = 0, rank: int = 0, holdout: float = 0.0, split: str = "all") -> PairSource:
    """Pairs from procedurally generated images (``data.source=synthetic``)."""
    images = holdout_split(synth_pool(modality, image_size, pool, seed), holdout, split)
    return PairSource(images, view_size, batch_size, seed, rank)


def noise_pairs(image_size: int, view_size: int | ViewConfig, pool: int, batch_size: int, seed: int = 0,
                rank: int = 0, holdout: float = 0.0, split: str = "all") -> PairSource:
    """Pairs from smooth random noise (``data.source=noise``): no generator cost, for tests and benches."""
    images = holdout_split(noise_pool(image_size, pool, seed), holdout, split)
    return PairSource(images, view_size, batch_size, seed, rank)
