"""In-memory batches of LD views from procedurally generated images — the default data source.

A pool of ``pool`` images is generated once from ``seed``; the pairs of step t on rank r are drawn
from a generator seeded by (seed, t, r), so a batch is a pure function of the step: the position is
``{"step": t}`` and resuming is exact. The shard loader (``ldisc.data``) offers the same interface.
"""
from __future__ import annotations

import numpy as np
import torch

from ldisc.views import ViewConfig, make_views_batch, pil_to_tensor


class SyntheticPairSource:
    def __init__(self, modality: str, image_size: int, view_size: int, pool: int, batch_size: int,
                 seed: int = 0, rank: int = 0, device: torch.device | str = "cpu"):
        from ldisc import synth

        if pool < 2:
            raise ValueError(f"data.pool must be ≥ 2 images, got {pool}")
        samples = synth.generate_many(modality, pool, size=image_size, seed=seed)
        self.images = torch.stack([pil_to_tensor(synth.to_pil(s)) for s in samples]).to(device)
        self.view_cfg = ViewConfig(size=view_size)
        self.batch_size, self.seed, self.rank = batch_size, seed, rank
        self.step = 0

    def _generator(self) -> torch.Generator:
        state = np.random.SeedSequence([self.seed, self.step, self.rank]).generate_state(2, np.uint64)
        return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))

    def next_batch(self) -> dict[str, torch.Tensor]:
        gen = self._generator()
        idx = torch.randperm(len(self.images), generator=gen)[: 2 * self.batch_size]
        if len(idx) < 2 * self.batch_size:   # small pool: sample with replacement
            idx = torch.randint(0, len(self.images), (2 * self.batch_size,), generator=gen)
        idx = idx.to(self.images.device)
        batch = make_views_batch(self.images[idx[0::2]], self.images[idx[1::2]], self.view_cfg, gen)
        self.step += 1
        return batch

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
