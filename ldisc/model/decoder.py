"""U-Net decoder with the LD heads: a pixel embedding branch and an optional clustering branch."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ldisc.model.encoder import conv_bn_relu


class UpBlock(nn.Module):
    """Upsample ×2, concatenate the skip feature, two 3×3 conv-BN-ReLU."""

    def __init__(self, c_in: int, c_skip: int, c_out: int):
        super().__init__()
        self.convs = nn.Sequential(conv_bn_relu(c_in + c_skip, c_out), conv_bn_relu(c_out, c_out))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.convs(torch.cat([x, skip], 1))


class UNetDecoder(nn.Module):
    """Decodes the five encoder features back to full resolution; returns the last feature map."""

    def __init__(self, channels: tuple[int, ...]):
        super().__init__()
        c = list(channels)
        self.ups = nn.ModuleList(UpBlock(c[i + 1], c[i], c[i]) for i in reversed(range(len(c) - 1)))
        self.out_channels = c[0]

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = feats[-1]
        for up, skip in zip(self.ups, reversed(feats[:-1])):
            x = up(x, skip)
        return x


class EmbeddingHead(nn.Module):
    """Pixel embedding: conv → ``dim`` channels, L2-normalised per pixel."""

    def __init__(self, c_in: int, dim: int = 32):
        super().__init__()
        self.net = nn.Sequential(conv_bn_relu(c_in, c_in), nn.Conv2d(c_in, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x), dim=1)


class ClusterHead(nn.Module):
    """Soft cluster masks: conv → K channels, sigmoid, then L1-normalised over the K clusters."""

    def __init__(self, c_in: int, clusters: int, eps: float = 1e-6):
        super().__init__()
        self.net = nn.Sequential(conv_bn_relu(c_in, c_in), nn.Conv2d(c_in, clusters, 1))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = torch.sigmoid(self.net(x))
        return m / (m.sum(1, keepdim=True) + self.eps)
