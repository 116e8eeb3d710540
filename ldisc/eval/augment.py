"""The authors' downstream augmentation, applied to a batch of images and masks together.

Fundus: a horizontal and a vertical flip, each with probability ½, then a rotation by an angle drawn
uniformly from [−180°, 180°]. X-ray: a rotation from [−30°, 30°], no flips. Rotations turn about the
image centre, keep the size and fill the corners with black (background in the mask). Images are
resampled bilinearly, masks by nearest neighbour, so that a mask stays binary and aligned with its
image. Deterministic given the generator.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augmentation:
    """What to draw per image: flips (each with probability ½) and a rotation range in degrees."""

    flips: bool
    max_degrees: float


PAPER_AUGMENTATION = {"fundus": Augmentation(flips=True, max_degrees=180.0),
                      "xray": Augmentation(flips=False, max_degrees=30.0)}


def _rotation_grid(angles_deg: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Sampling grid that turns each image counter-clockwise (as seen on screen) by its angle."""
    a = torch.deg2rad(angles_deg.double())
    cos, sin = torch.cos(a), torch.sin(a)
    # output pixel (x, y) samples the input at R(-a)(x, y); y points down in image coordinates
    theta = torch.stack([torch.stack([cos, -sin, torch.zeros_like(a)], 1),
                         torch.stack([sin, cos, torch.zeros_like(a)], 1)], 1)
    return F.affine_grid(theta.float(), list(shape), align_corners=False)


def augment_batch(x: torch.Tensor, y: torch.Tensor, aug: Augmentation, gen: torch.Generator,
                  image_mode: str = "bilinear") -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Flip and rotate images (B, C, H, W) and masks (B, 1, H, W) alike; returns them and the draws.

    The draws (``hflip``, ``vflip`` bool (B,), ``degrees`` (B,)) come from ``gen`` on the CPU.
    """
    b = x.shape[0]
    hflip = torch.rand(b, generator=gen) < 0.5 if aug.flips else torch.zeros(b, dtype=torch.bool)
    vflip = torch.rand(b, generator=gen) < 0.5 if aug.flips else torch.zeros(b, dtype=torch.bool)
    degrees = (torch.rand(b, generator=gen, dtype=torch.float64) * 2 - 1) * aug.max_degrees
    dev = x.device
    for flag, dim in ((hflip, 3), (vflip, 2)):
        idx = flag.to(dev)
        if bool(flag.any()):
            x = torch.where(idx.view(-1, 1, 1, 1), x.flip(dim), x)
            y = torch.where(idx.view(-1, 1, 1, 1), y.flip(dim), y)
    if aug.max_degrees > 0:
        grid = _rotation_grid(degrees, x.shape).to(dev)
        x = F.grid_sample(x, grid.to(x.dtype), mode=image_mode, padding_mode="zeros", align_corners=False)
        y = F.grid_sample(y, grid.to(y.dtype), mode="nearest", padding_mode="zeros", align_corners=False)
    return x, y, {"hflip": hflip, "vflip": vflip, "degrees": degrees}

