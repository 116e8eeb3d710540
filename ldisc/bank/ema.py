"""An exponential-moving-average copy of the LD network that produces the bank's key vectors.

After each optimiser step ``update(model)`` sets, for every parameter,

    θ_key ← m · θ_key + (1 − m) · θ_online

and copies the buffers (BatchNorm running statistics). ``encode_patches(batch)`` returns the L_pd
patch vectors of the batch's four views — the same vectors, in the same order, pooled the same way
(``objective.patch_pooling`` / ``center_sigma`` through :func:`ldisc.objectives.patches.pool_patches`),
as ``StepLosses.patch_vectors`` — computed with θ_key, without gradients, BatchNorm in eval mode (its
running statistics; no batch statistics, so nothing depends on how the batch is split over ranks).
m = 0 would make the keys the online network's: the bank then takes ``StepLosses.patch_vectors``
directly and no key encoder is built (:func:`ldisc.bank.build.build_key_encoder`).

The key network is a full copy: with ZeRO-3 (partitioned parameters) the update needs gathered
parameters, which this class does not do.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ldisc.objectives.patches import PATCH_ORDER, align_second_views, patch_vectors, pool_patches


class EMAKeyEncoder:
    def __init__(self, model: nn.Module, momentum: float, grid: int = 8, pooling: str = "mean",
                 sigma: float = 0.25):
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"EMA momentum must be in [0, 1), got {momentum}")
        self.momentum, self.grid = float(momentum), int(grid)
        self.pooling, self.sigma = str(pooling), float(sigma)
        self.model = copy.deepcopy(model).requires_grad_(False).eval()

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """θ_key ← m·θ_key + (1 − m)·θ_online; buffers copied."""
        for (name, key), (online_name, online) in zip(self.model.named_parameters(), model.named_parameters()):
            if name != online_name:
                raise ValueError(f"key encoder and model differ: {name} vs {online_name}")
            key.lerp_(online.detach().to(key), 1.0 - self.momentum)
        for key, online in zip(self.model.buffers(), model.buffers()):
            key.copy_(online)

    @torch.no_grad()
    def encode_patches(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(4·B·G², D) unit patch vectors of the batch with the EMA weights (no mixup view)."""
        b = batch[PATCH_ORDER[0]].shape[0]
        embedding = self.model(torch.cat([batch[k] for k in PATCH_ORDER])).embedding
        grids = dict(zip(PATCH_ORDER, pool_patches(embedding, self.grid, self.pooling, self.sigma).split(b)))
        return patch_vectors(align_second_views(grids, batch))

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "momentum": self.momentum}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.momentum = float(state["momentum"])
