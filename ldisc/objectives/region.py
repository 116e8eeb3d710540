"""Region discrimination, entropy and the shape-prior adversarial terms of stage 2."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ldisc.dist import Collective

_EPS = 1e-6


def region_features(embedding: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """r_k = normalise(mean_{pixels} embedding · mask_k): (B, D, H, W), (B, K, H, W) → (B, K, D).

    One contraction over pixels; the (B, K, D, H, W) product is never formed.
    """
    hw = embedding.shape[-1] * embedding.shape[-2]
    r = torch.einsum("bdhw,bkhw->bkd", embedding, masks) / hw
    return F.normalize(r, dim=2)


def cluster_centres(r: torch.Tensor, collective: Collective, prototypes: torch.Tensor | None = None,
                    momentum: float = 0.0) -> torch.Tensor:
    """c_k = normalise(m · c_k^ema + (1 − m) · mean of r_k over the global batch); m = 0: the paper's."""
    total = collective.all_reduce_sum(r.sum(0))
    count = collective.all_reduce_detached(torch.tensor(float(r.shape[0]), device=r.device))
    centre = total / count
    if prototypes is not None and momentum > 0:
        centre = momentum * prototypes.to(centre) + (1 - momentum) * centre
    return F.normalize(centre, dim=1)


def region_loss(r: torch.Tensor, centres: torch.Tensor, tau: float = 0.2) -> torch.Tensor:
    """L_rd = −mean_{b,k} log p(k | r_bk),  p(k | r) = softmax_j (r · c_j / τ)."""
    b, k, _ = r.shape
    logits = torch.einsum("bkd,jd->bkj", r, centres) / tau
    target = torch.arange(k, device=r.device).expand(b, k)
    return F.cross_entropy(logits.reshape(b * k, k), target.reshape(-1))


class _BinaryEntropy(torch.autograd.Function):
    """Per-image mean binary entropy of clamp(m, ε, 1 − ε) in nats, keeping only ``m`` for the backward
    pass (d/dm = −logit(m) / (K·H·W) inside the clamp, 0 outside): none of the four mask-sized
    temporaries of the plain formula is kept, which at 448 px, batch 4 is 0.8 GB."""

    @staticmethod
    def forward(ctx, masks: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(masks)
        m = masks.clamp(_EPS, 1 - _EPS)
        return -(m * torch.log(m) + (1 - m) * torch.log(1 - m)).flatten(1).mean(1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (masks,) = ctx.saved_tensors
        scale = (-grad / (masks.numel() // masks.shape[0])).view(-1, *([1] * (masks.dim() - 1)))
        out = torch.logit(masks, eps=_EPS).mul_(scale)
        return out.masked_fill_((masks < _EPS) | (masks > 1 - _EPS), 0.0)


def binary_entropy_per_image(masks: torch.Tensor) -> torch.Tensor:
    """(B, K, H, W) → (B,): −mean_{k,h,w} [m ln m + (1 − m) ln(1 − m)], in nats."""
    return _BinaryEntropy.apply(masks)


def entropy_loss(masks: torch.Tensor, base: float = 2.0) -> torch.Tensor:
    """L_ent = −mean [m log_b m + (1 − m) log_b(1 − m)] over masks, clusters and pixels.

    ``base`` 2 (the authors': bits, 1 at m = 0.5) or e (nats: the same term × ln 2 ≈ 0.693).
    """
    return entropy_from_per_image(binary_entropy_per_image(masks), base)


def entropy_from_per_image(entropy_nats: torch.Tensor, base: float = 2.0) -> torch.Tensor:
    """L_ent from per-image entropies (:func:`binary_entropy_per_image`): their mean in base ``base``."""
    return entropy_nats.mean() / math.log(base)


def adversarial_generator_loss(disc_logits_fake: torch.Tensor) -> torch.Tensor:
    """Generator side: BCE(D(mask_0), real) — the cluster mask should look like a real shape."""
    return F.binary_cross_entropy_with_logits(disc_logits_fake, torch.ones_like(disc_logits_fake))


def adversarial_discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator side: BCE(D(real shapes), 1) + BCE(D(mask_0.detach()), 0)."""
    return (F.binary_cross_entropy_with_logits(logits_real, torch.ones_like(logits_real))
            + F.binary_cross_entropy_with_logits(logits_fake, torch.zeros_like(logits_fake)))
