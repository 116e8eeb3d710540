"""Prediction overlays: the test image with the prediction filled in blue and the truth outlined in green.

Blue and green stay visible on both modalities: a fundus photograph is red/orange, where a red
prediction would vanish, and an X-ray is grey. Overlays are enlarged (nearest neighbour, whole pixels)
to at least ``MIN_SIDE`` pixels so that thin vessels can be seen in a report.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
from PIL import Image

PRED_COLOUR = np.array([30, 120, 255], dtype=np.float32)   # prediction: blue, blended 50 %
TRUTH_COLOUR = np.array([40, 255, 40], dtype=np.uint8)     # truth: green outline
MIN_SIDE = 256


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` that touch a background pixel (4-neighbourhood)."""
    padded = np.pad(mask, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def enlarge_scale(height: int, width: int, min_side: int = MIN_SIDE) -> int:
    """The whole-number factor that brings the shorter side to at least ``min_side`` pixels."""
    return max(1, math.ceil(min_side / max(1, min(height, width))))


def compose_overlay(image: np.ndarray, truth: np.ndarray, prob: np.ndarray, threshold: float = 0.5,
                    scale: int | None = None) -> Image.Image:
    """RGB overlay: image (S,S,3) u8, truth (S,S) bool, prob (S,S) u8 (0–255); ``scale`` None = to ``MIN_SIDE``."""
    img = image.astype(np.float32)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    pred = prob >= threshold * 255
    img[pred] = 0.5 * img[pred] + 0.5 * PRED_COLOUR
    out = img.clip(0, 255).astype(np.uint8)
    out[_outline(truth.astype(bool))] = TRUTH_COLOUR
    pil = Image.fromarray(out)
    scale = enlarge_scale(pil.height, pil.width) if scale is None else scale
    return pil.resize((pil.width * scale, pil.height * scale), Image.Resampling.NEAREST) if scale > 1 else pil


def save_overlays(folder: str | Path, overlays: list[dict], threshold: float = 0.5) -> list[Path]:
    """Write each overlay as ``<k>_<name>.png`` into ``folder``; returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, ov in enumerate(overlays):
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", str(ov["name"]))
        path = folder / f"{k}_{name}.png"
        compose_overlay(ov["image"], ov["truth"], ov["prob"], threshold).save(path)
        paths.append(path)
    return paths
