"""What the stage-2 cluster masks look like, in numbers: crispness, area shares, clusters in use,
and — where the true anatomy is known (synthetic images) — how well the hard clusters match it.

Masks are (B, K, H, W), non-negative and summing to ~1 over K (the clustering head's output).

- crispness = mean over pixels of max_k m_k: 1/K for uniform masks, 1 for one-hot masks;
- area share a_k = mean over images and pixels of m_k, renormalised to sum to 1;
- effective count = exp(−Σ a_k ln a_k): K when every cluster covers the same area, 1 when one does;
- best-match Dice of a structure = max over clusters k of Dice(argmax map == k, structure mask),
  pooled over the batch (2·|A∩T| / (|A| + |T|) summed over images).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class ClusterStats:
    crispness: float
    effective_count: float
    area_share: list[float]
    dice: dict[str, float] = field(default_factory=dict)    # structure → best-match Dice
    dice_cluster: dict[str, int] = field(default_factory=dict)  # structure → the best cluster

    def as_record(self) -> dict:
        def rnd(v):
            if isinstance(v, float):
                return round(v, 5)
            if isinstance(v, dict):
                return {k: rnd(x) for k, x in v.items()}
            return [rnd(x) for x in v] if isinstance(v, list) else v
        return rnd(asdict(self))


def crispness(masks: torch.Tensor) -> float:
    return float(masks.detach().float().amax(1).mean())


def area_shares(masks: torch.Tensor) -> torch.Tensor:
    a = masks.detach().float().mean((0, 2, 3))
    return a / a.sum().clamp_min(1e-12)


def effective_count(shares: torch.Tensor) -> float:
    p = shares[shares > 0]
    return float(math.exp(float(-(p * p.log()).sum())))


def hard_map(masks: torch.Tensor) -> torch.Tensor:
    """(B, K, H, W) soft masks → (B, H, W) index of the largest mask."""
    return masks.argmax(1)


def best_match_dice(hard: torch.Tensor, truth: dict[str, torch.Tensor], k: int) -> tuple[dict, dict]:
    """Best-match Dice of each true mask (B, H, W bool) against the K hard clusters of ``hard``.

    Structures absent from every image of the batch are left out (their Dice is undefined).
    Returns ({name: Dice}, {name: best cluster index}).
    """
    onehot = F.one_hot(hard.long(), k).permute(0, 3, 1, 2).float()          # (B, K, H, W)
    size_k = onehot.sum((0, 2, 3))
    dice, best = {}, {}
    for name, mask in truth.items():
        t = mask.to(onehot.device).float()
        if t.sum() == 0:
            continue
        inter = torch.einsum("bkhw,bhw->k", onehot, t)
        d = 2 * inter / (size_k + t.sum())
        dice[name], best[name] = float(d.max()), int(d.argmax())
    return dice, best


def cluster_stats(masks: torch.Tensor, truth: dict[str, torch.Tensor] | None = None) -> ClusterStats:
    shares = area_shares(masks)
    stats = ClusterStats(crispness(masks), effective_count(shares), [float(a) for a in shares])
    if truth:
        stats.dice, stats.dice_cluster = best_match_dice(hard_map(masks), truth, masks.shape[1])
    return stats
