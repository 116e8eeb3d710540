"""Shape-prior discriminator: a small CNN telling real shape masks from generated cluster masks."""
from __future__ import annotations

import torch
from torch import nn


class ShapeDiscriminator(nn.Module):
    """Strided conv stack (LeakyReLU) → global average → one logit per mask. Input (B, 1, H, W)."""

    def __init__(self, width: int = 16, depth: int = 5):
        super().__init__()
        layers, c_in = [], 1
        for i in range(depth):
            c_out = width * 2 ** min(i, 3)
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.logit = nn.Linear(c_in, 1)

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        return self.logit(self.features(mask).mean((2, 3))).squeeze(1)
