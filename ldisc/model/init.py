"""Weight initialisation of the LD network (``model.init``).

``kaiming`` (default, the authors'): every convolution gets Kaiming-normal weights (fan_out, ReLU
gain) and zero bias; batch norms start at weight 1, bias 0. ``torch``: PyTorch's default init.
"""
from __future__ import annotations

from torch import nn

INITS = ("kaiming", "torch")


def init_weights(module: nn.Module, scheme: str = "kaiming") -> nn.Module:
    if scheme not in INITS:
        raise ValueError(f"unknown model.init {scheme!r}; one of {INITS}")
    if scheme == "kaiming":
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
    return module
