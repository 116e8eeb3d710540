"""U-Net decoder with the LD heads: a pixel embedding branch and an optional clustering branch.

Two decoders (``model.decoder``), both reading the encoder's five skip features:

``authors`` (default, as the LD authors built it). Each stage upsamples ×2 (nearest), concatenates
the skip feature and applies conv3×3-BN-ReLU to the skip's width, then conv3×3-BN-ReLU down to the
next shallower width (tiny: 128+128→128→64, 64+64→64→32, 32+32→32→16); the last upsampled map is
concatenated with the full-resolution feature (16+16 = 32 channels) and that concat feeds the heads
directly. Heads: conv3×3-BN-ReLU-conv3×3 (embedding: 32→32→32; clustering: 32→K→K). Conv bias on.

``ldisc`` (the earlier ldisc decoder, kept as an option): bilinear upsampling, two conv-BN-ReLU per
stage at the skip's width, a 16-channel output, heads conv3×3-BN-ReLU then a 1×1 conv, no conv bias.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ldisc.model.checkpointing import run_segment
from ldisc.model.encoder import conv_bn_relu
from ldisc.model.init import init_weights

DECODERS = ("authors", "ldisc")


def _check(style: str) -> str:
    if style not in DECODERS:
        raise ValueError(f"unknown model.decoder {style!r}; one of {DECODERS}")
    return style


class UpBlock(nn.Module):
    """Upsample ×2 to the skip's size, concatenate the skip feature, two 3×3 conv-BN-ReLU."""

    def __init__(self, c_in: int, c_skip: int, c_mid: int, c_out: int, mode: str = "nearest", bias: bool = True):
        super().__init__()
        self.mode = mode
        self.convs = nn.Sequential(conv_bn_relu(c_in + c_skip, c_mid, bias), conv_bn_relu(c_mid, c_out, bias))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.convs(torch.cat([upsample(x, skip, self.mode), skip], 1))


def upsample(x: torch.Tensor, like: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "nearest":
        return F.interpolate(x, size=like.shape[-2:], mode="nearest")
    return F.interpolate(x, size=like.shape[-2:], mode=mode, align_corners=False)


class UNetDecoder(nn.Module):
    """Decodes the five encoder features back to full resolution; returns the feature map the heads
    read (``out_channels`` wide: 2·c1 for ``authors``, c1 for ``ldisc``). ``checkpoint``: recompute
    each stage's insides during backward (:mod:`ldisc.model.checkpointing`)."""
    checkpoint = False

    def __init__(self, channels: tuple[int, ...], style: str = "authors", init: str = "kaiming"):
        super().__init__()
        c, self.style = list(channels), _check(style)
        if style == "authors":
            # stage i (deepest first) reads the previous output + skip c[i], ends at c[i-1]
            self.ups = nn.ModuleList(UpBlock(c[i + 1] if i == len(c) - 2 else c[i], c[i], c[i], c[i - 1])
                                     for i in reversed(range(1, len(c) - 1)))
            self.out_channels = 2 * c[0]
        else:
            self.ups = nn.ModuleList(UpBlock(c[i + 1], c[i], c[i], c[i], "bilinear", bias=False)
                                     for i in reversed(range(len(c) - 1)))
            self.out_channels = c[0]
        init_weights(self, init)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.join(self.stages(feats), feats[0])

    def stages(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """The up-stages: the last one's output (half resolution for ``authors``, full for ``ldisc``)."""
        x = feats[-1]
        for up, skip in zip(self.ups, reversed(feats[len(feats) - 1 - len(self.ups):-1])):
            x = run_segment(up, x, skip, enabled=self.checkpoint)
        return x

    def join(self, x: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
        """The feature the heads read, from :meth:`stages`' output and the full-resolution skip feature."""
        if self.style == "authors":
            return torch.cat([upsample(x, full, "nearest"), full], 1)
        return x


def l2_normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """x / max(‖x‖₂, eps) over dim 1 (``F.normalize``'s result; its channel-dim norm is ~9× slower
    on CPU for (B, C, H, W) maps than this sum of squares)."""
    return x / x.pow(2).sum(1, keepdim=True).sqrt().clamp_min(eps)


def conv_head(c_in: int, c_mid: int, c_out: int, style: str = "authors") -> nn.Sequential:
    """A head: conv3×3-BN-ReLU to ``c_mid``, then conv3×3 (``authors``) or conv1×1 (``ldisc``) to ``c_out``."""
    if _check(style) == "authors":
        return nn.Sequential(conv_bn_relu(c_in, c_mid), nn.Conv2d(c_mid, c_out, 3, padding=1))
    return nn.Sequential(conv_bn_relu(c_in, c_in, bias=False), nn.Conv2d(c_in, c_out, 1))


class EmbeddingHead(nn.Module):
    """Pixel embedding: conv head → ``dim`` channels, L2-normalised per pixel."""

    def __init__(self, c_in: int, dim: int = 32, style: str = "authors", init: str = "kaiming"):
        super().__init__()
        self.net = init_weights(conv_head(c_in, dim, dim, style), init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.finish(self.net(x))

    @staticmethod
    def finish(logits: torch.Tensor) -> torch.Tensor:
        return l2_normalize(logits)


class ClusterHead(nn.Module):
    """Soft cluster masks: conv head → K channels, sigmoid, then L1-normalised over the K clusters."""

    def __init__(self, c_in: int, clusters: int, eps: float = 1e-6, style: str = "authors", init: str = "kaiming"):
        super().__init__()
        self.net = init_weights(conv_head(c_in, clusters, clusters, style), init)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.finish(self.net(x))

    def finish(self, logits: torch.Tensor) -> torch.Tensor:
        m = torch.sigmoid(logits)
        return m / (m.sum(1, keepdim=True) + self.eps)
