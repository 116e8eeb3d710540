"""Segmentation scores: Dice and IoU of thresholded predictions, radial error for landmarks.

Conventions: a prediction is a probability map in [0, 1] thresholded at ``threshold`` (0.5, the
authors' test threshold; they binarise resized ground-truth masks at 0.3); an image whose ground truth and prediction are both empty scores 1.0 (nothing to find,
nothing found), one with an empty truth and a non-empty prediction scores 0.0.
"""
from __future__ import annotations

import numpy as np
import torch


def _binarise(pred: torch.Tensor, threshold: float) -> torch.Tensor:
    return (pred >= threshold).flatten(1).float()


def dice_per_image(prob: torch.Tensor, target: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Dice of each image of a batch. ``prob``: (B, 1, H, W) or (B, H, W) in [0, 1]; ``target`` binary."""
    p = _binarise(prob, threshold)
    t = (target.flatten(1) > 0.5).float()
    inter = (p * t).sum(1)
    total = p.sum(1) + t.sum(1)
    return torch.where(total > 0, 2 * inter / total.clamp_min(1e-12), torch.ones_like(total))


def iou_per_image(prob: torch.Tensor, target: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Intersection over union of each image of a batch; same conventions as :func:`dice_per_image`."""
    p = _binarise(prob, threshold)
    t = (target.flatten(1) > 0.5).float()
    inter = (p * t).sum(1)
    union = p.sum(1) + t.sum(1) - inter
    return torch.where(union > 0, inter / union.clamp_min(1e-12), torch.ones_like(union))


def batch_dice_loss(prob: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """The authors' training and validation loss: the whole batch is one volume,

        L = 1 − 2 Σ p·y / (Σ p + Σ y + smooth),   smooth = 1, only in the denominator;

    when the batch holds no foreground at all (Σ y = 0) it is computed on the complements 1 − p, 1 − y
    (Dice of the background). The authors return −2Σpy/(…); the constant 1 changes neither gradients
    nor which epoch has the lowest validation loss, and keeps the loss in [0, 1] like the per-image form.
    """
    p, y = prob.flatten(), target.flatten().to(prob.dtype)
    if not bool((y > 0).any()):
        p, y = 1 - p, 1 - y
    return 1 - 2 * (p * y).sum() / (p.sum() + y.sum() + smooth)


def soft_dice_loss(prob: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """ldisc's per-image loss: 1 − soft Dice per image (smoothed by ``eps``), averaged over the batch."""
    p, t = prob.flatten(1), target.flatten(1)
    dice = (2 * (p * t).sum(1) + eps) / (p.sum(1) + t.sum(1) + eps)
    return 1 - dice.mean()


def radial_error(pred_xy: np.ndarray, true_xy: np.ndarray, pixel_spacing: float = 1.0) -> np.ndarray:
    """Euclidean distance between predicted and true landmarks, (N, 2) each, in ``pixel_spacing`` units."""
    pred_xy, true_xy = np.asarray(pred_xy, dtype=float), np.asarray(true_xy, dtype=float)
    if pred_xy.shape != true_xy.shape or pred_xy.shape[-1] != 2:
        raise ValueError(f"landmarks must be matching (N, 2) arrays, got {pred_xy.shape} and {true_xy.shape}")
    return np.linalg.norm(pred_xy - true_xy, axis=-1) * pixel_spacing


DICE_LOSSES = {"dice_batch": batch_dice_loss, "dice_image": soft_dice_loss}


SUCCESS_RADII_PCT = (2, 4, 8)


def landmark_scores(pred_xy: np.ndarray, true_xy: np.ndarray, width: float) -> dict[str, float]:
    """Mean radial error in pixels and in % of the image width, and the share of landmarks within
    2, 4 and 8 % of the width, over all (image, landmark) pairs: (…, 2) arrays of (x, y)."""
    err = radial_error(np.reshape(pred_xy, (-1, 2)), np.reshape(true_xy, (-1, 2)))
    out = {"mre_px": float(err.mean()), "mre_pct": float(100 * err.mean() / width)}
    out |= {f"sr_{r}pct": float((err <= r / 100 * width).mean()) for r in SUCCESS_RADII_PCT}
    return out
