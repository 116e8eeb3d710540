"""VGG16-bn encoder returning the five skip features (one per resolution, before each pooling)."""
from __future__ import annotations

import torch
from torch import nn

from ldisc.model.checkpointing import run_segment
from ldisc.model.init import init_weights

# channels of the five VGG16 blocks at full width, and how many 3x3 convs each block has
VGG16_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
WIDTH_DIVISORS = {"full": 1, "small": 2, "tiny": 4}
# engine.activation_checkpointing=selective: the first block (full resolution, a third of the encoder's
# activations) runs as a selective segment — its second convolution's output kept, the rest recomputed
# (bench/step.py); the later blocks run plainly
SELECTIVE_BLOCKS = 1


def conv_bn_relu(c_in: int, c_out: int, bias: bool = True) -> nn.Sequential:
    """3×3 conv (with bias, as the authors' VGG and decoder) → BN → ReLU."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=bias),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def encoder_channels(width: str) -> tuple[int, ...]:
    if width not in WIDTH_DIVISORS:
        raise ValueError(f"unknown encoder width {width!r}; choose one of {sorted(WIDTH_DIVISORS)}")
    return tuple(c // WIDTH_DIVISORS[width] for c, _ in VGG16_BLOCKS)


class VGGEncoder(nn.Module):
    """VGG16 with batch norm. ``width``: tiny (16…128), small (32…256) or full (64…512).

    ``in_channels``: 3 (fundus, RGB) or 1 (X-ray; see :func:`ldisc.views.input_normalization`).
    ``bias``: conv bias (the authors': yes). ``init``: see :mod:`ldisc.model.init`.
    ``forward(x)`` returns ``[f1, …, f5]`` at strides 1, 2, 4, 8, 16. ``checkpoint``: recompute each
    block's insides during backward (:mod:`ldisc.model.checkpointing`).
    """
    checkpoint = False

    def __init__(self, width: str = "tiny", in_channels: int = 3, bias: bool = True, init: str = "kaiming"):
        super().__init__()
        self.width, self.in_channels, self.bias = width, in_channels, bias
        self.channels = encoder_channels(width)
        blocks, c_in = [], in_channels
        for c_out, (_, n_convs) in zip(self.channels, VGG16_BLOCKS):
            layers = [conv_bn_relu(c_in if i == 0 else c_out, c_out, bias) for i in range(n_convs)]
            blocks.append(nn.Sequential(*layers))
            c_in = c_out
        self.blocks = nn.ModuleList(blocks)
        self.pool = nn.MaxPool2d(2)
        init_weights(self, init)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i, block in enumerate(self.blocks):   # a segment: the pooling before a block, then the block
            mode = self.checkpoint if self.checkpoint != "selective" or i < SELECTIVE_BLOCKS else False
            x = run_segment(block, x, enabled=mode, fn=None if i == 0 else self._pooled(block))
            feats.append(x)
        return feats

    def _pooled(self, block: nn.Module):
        return lambda x: block(self.pool(x))
