"""Named options that make the stage-2 cluster masks crisper (all off by default = the authors' LD).

- ``objective.mask_power`` p: sharpen the sigmoid outputs before the L1 normalisation,
  m_k = s_k^p / Σ_j s_j^p. Since the head's masks are s_k / Σ s_j, this equals m_k^p / Σ m_j^p of
  the head's output, so it is applied here without touching the network. p = 1: the paper's masks;
  p → ∞ tends to a hard argmax (like a softmax head with temperature 1/p on log s).
- ``objective.w_area``: the area term beside the entropy — every cluster's mean mask over the batch
  should be near 1/K: L_area = K · Σ_k (ā_k − 1/K)², 0 for equal areas, K − 1 when one cluster
  takes every pixel. It keeps a strong entropy weight from collapsing all pixels into one cluster.
- ``objective.region_views``: which views' masks enter L_rd, its centres and L_ent: ``augmented`` (the
  four augmented views only, as the authors compute it: the default) or ``all`` (+ the mixup image).
"""
from __future__ import annotations

import torch

REGION_VIEWS = ("augmented", "all")


def sharpen(masks: torch.Tensor, power: float) -> torch.Tensor:
    """m^p / Σ_k m^p over the cluster axis (dim 1); p = 1 returns ``masks`` unchanged."""
    if power == 1.0:
        return masks
    if power <= 0:
        raise ValueError(f"objective.mask_power must be > 0, got {power}")
    m = masks.clamp_min(1e-12).pow(power)
    return m / m.sum(1, keepdim=True)


def area_loss(masks: torch.Tensor) -> torch.Tensor:
    """L_area = K · Σ_k (mean_{b,h,w} m_k − 1/K)²."""
    return area_penalty(masks.mean((0, 2, 3)))


def area_penalty(shares: torch.Tensor) -> torch.Tensor:
    """L_area from the clusters' mean masks ā (K,): K · Σ_k (ā_k − 1/K)²."""
    k = shares.shape[0]
    return k * ((shares - 1.0 / k) ** 2).sum()


def region_views(*rows: torch.Tensor, pairs: int, which: str) -> tuple[torch.Tensor, ...]:
    """The per-image rows (embeddings, masks or per-image reductions of them) that region
    discrimination uses: views are stacked in the order of ``ldisc.views.VIEW_KEYS`` (four augmented
    views, then the mixup image), ``pairs`` rows each."""
    if which not in REGION_VIEWS:
        raise ValueError(f"objective.region_views must be one of {REGION_VIEWS}, got {which!r}")
    if which == "augmented":
        return tuple(r[: 4 * pairs] for r in rows)
    return rows
