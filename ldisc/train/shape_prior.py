"""Shape prior for shape-guided segmentation: real shape masks and a discriminator with its own Adam.

The generator side (``objective.w_adversarial · BCE(D(mask_0), real)``) is part of the LD objective
and flows through the DeepSpeed engine. The discriminator is small and trains beside it with
``torch.optim.Adam`` at ``train.lr × shape_prior.lr_scale`` (0.05 in the paper), halved on the same
schedule; its gradients are averaged over ranks with one all-reduce per step.

Real masks come from ``shape_prior.source``: a folder of PNG masks (any size; resized to the view
size, thresholded at 0.5, e.g. OCTA or DSA vessel masks as in the paper), ``cross_modality`` (the
default: procedural OCTA-like and DSA-like vessel trees of :mod:`ldisc.synth.vessels`, alternating),
``octa`` or ``dsa`` (one of the two), or ``synthetic`` — the fundus generator's own vessel masks
(same modality as the images: only for ablations; the shape-guided preset never uses it).
Every real batch is augmented as the authors do: random flips, rotation in [−180°, 180°] and a
random crop (side ``crop_scale`` × the mask's, anywhere inside it) resized back to the view size.
The discriminator sees mask 0 of the four augmented views (never of the mixup image).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ldisc.dist import average_over_ranks_
from ldisc.config_schema import ShapePriorConfig
from ldisc.model import ShapeDiscriminator
from ldisc.objectives.region import adversarial_discriminator_loss


CROSS_MODALITY = {"cross_modality": "mixed", "octa": "octa", "dsa": "dsa"}
SOURCES = ("synthetic", *CROSS_MODALITY)


def augment_masks(masks: torch.Tensor, gen: torch.Generator, crop_scale: tuple[float, float] = (0.6, 1.0)) -> torch.Tensor:
    """Random flip, rotation in [−180°, 180°] and crop (side ∈ crop_scale × the mask's) of each
    (N, 1, S, S) binary mask, resampled to S × S and re-binarised at 0.5 (zeros outside)."""
    n = masks.shape[0]
    angle = (torch.rand(n, generator=gen) * 2 - 1) * torch.pi
    scale = crop_scale[0] + (crop_scale[1] - crop_scale[0]) * torch.rand(n, generator=gen)
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * (1 - scale)[:, None]
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1),
                         torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1).to(masks)
    grid = F.affine_grid(theta, list(masks.shape), align_corners=False)
    return (F.grid_sample(masks, grid, mode="bilinear", padding_mode="zeros", align_corners=False) > 0.5).to(masks)


def _as_tensor(masks: list[np.ndarray], size: int) -> torch.Tensor:
    t = torch.stack([torch.as_tensor(np.asarray(m, dtype=np.float32)) for m in masks])[:, None]
    t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
    return (t > 0.5).float()


def load_shape_masks(source: str, size: int, count: int, seed: int) -> torch.Tensor:
    """(N, 1, size, size) binary masks from a PNG folder or ``synthetic`` vessel masks."""
    if source == "synthetic":
        from ldisc import synth

        samples = synth.generate_many("fundus", count, size=size, seed=seed + 7919)
        return _as_tensor([s.masks["vessel"] for s in samples], size)
    if source in CROSS_MODALITY:
        from ldisc.synth.vessels import vessel_masks

        # drawn at ≥ 128 px (their calibre statistics need the room), then resized to the view size
        return _as_tensor(vessel_masks(CROSS_MODALITY[source], count, max(size, 128), seed + 7919), size)
    folder = Path(source)
    files = sorted(p for p in folder.glob("*.png")) if folder.is_dir() else []
    if not files:
        raise FileNotFoundError(f"shape_prior.source={source!r}: not one of {SOURCES} and no *.png masks there")
    arrays = [np.asarray(Image.open(p).convert("L"), dtype=np.float32) / 255.0 for p in files]
    return _as_tensor(arrays, size)


class ShapePrior:
    """Discriminator, its optimiser and schedule, and the pool of real masks."""

    def __init__(self, sp: ShapePriorConfig, seed: int, lr: float, halve_every: int, view_size: int,
                 device: torch.device):
        torch.manual_seed(seed + 1009)
        self.discriminator = ShapeDiscriminator(sp.width).to(device)
        self.optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=lr * sp.lr_scale)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=halve_every, gamma=0.5)
        self.real = load_shape_masks(sp.source, view_size, sp.pool, seed).to(device)
        self.seed = seed

    def _real_batch(self, n: int, step: int, rank: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step * 4099 + rank)
        idx = torch.randint(0, len(self.real), (n,), generator=gen).to(self.real.device)
        return augment_masks(self.real[idx], gen)

    def step(self, fake_masks: torch.Tensor, step: int, rank: int) -> float:
        """One discriminator update on this rank's mask 0 (detached) vs. real masks → its loss.

        ``fake_masks``: the cluster masks of the five inputs (x1_1, x1_2, x2_1, x2_2, mix, B each);
        only the four augmented views' mask 0 is used, never the mixup image's."""
        fake = fake_masks[: 4 * len(fake_masks) // 5, :1].detach()
        self.optimizer.zero_grad(set_to_none=True)
        loss = adversarial_discriminator_loss(self.discriminator(self._real_batch(len(fake), step, rank)),
                                              self.discriminator(fake))
        loss.backward()
        average_over_ranks_(p.grad for p in self.discriminator.parameters())
        self.optimizer.step()
        self.scheduler.step()
        return float(loss.detach())

    def state_dict(self) -> dict:
        return {"discriminator": self.discriminator.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.discriminator.load_state_dict(state["discriminator"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
