"""What the losses read from the network's full-resolution outputs: a few numbers per image.

Every loss of LD reduces the pixel embedding E (B, D, H, W) and the cluster masks M (B, K, H, W) over
pixels, image by image, before anything crosses images:

- the patch grid: E pooled to G×G cells and L2-normalised (:func:`ldisc.objectives.patches.pool_patches`);
- the region features r_k = normalise(mean_pixels E · m_k) (:func:`ldisc.objectives.region.region_features`);
- the binary entropy of the masks, per image (:func:`ldisc.objectives.region.binary_entropy_per_image`);
- the clusters' mean masks (for ``objective.w_area``), mask 0 (for the shape prior's generator term)
  and, when asked, the masks themselves, detached (for the discriminator step and cluster diagnostics).

:class:`PixelReductions` computes them from (E, M); the network applies it to its whole output or,
under ``engine.activation_checkpointing=selective``, chunk by chunk of images
(:mod:`ldisc.model.chunked_heads`), so that E and M never exist for the whole batch at once. It always
computes in fp32 (fp64 stays fp64), outside autocast: the losses stay in fp32 under ``engine.precision=bf16-autocast``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ldisc.objectives.crisp import sharpen
from ldisc.objectives.patches import pool_patches
from ldisc.objectives.region import binary_entropy_per_image, region_features


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


@dataclass(frozen=True)
class PixelReductions:
    grid: int
    pooling: str
    sigma: float
    stage: int
    mask_power: float = 1.0
    area: bool = False          # "area": (B, K) mean mask per cluster
    mask0: bool = False         # "mask0": (B, 1, H, W) with gradient
    keep_masks: bool = False    # "masks": (B, K, H, W), detached

    def __call__(self, embedding: torch.Tensor, masks: torch.Tensor | None) -> dict[str, torch.Tensor]:
        with torch.autocast(embedding.device.type, enabled=False):
            e = _at_least_fp32(embedding)
            out = {"grid": pool_patches(e, self.grid, self.pooling, self.sigma)}
            if self.stage < 2:
                if self.keep_masks and masks is not None:
                    out["masks"] = _at_least_fp32(masks.detach())
                return out
            if masks is None:
                raise ValueError("stage 2 needs a model with a clustering branch (model.clusters > 0)")
            m = sharpen(_at_least_fp32(masks), self.mask_power)
            out["region"] = region_features(e, m)
            out["entropy"] = binary_entropy_per_image(m)
            if self.area:
                out["area"] = m.mean((2, 3))
            if self.mask0:
                out["mask0"] = m[:, :1]
            if self.keep_masks:
                out["masks"] = m.detach()
            return out
