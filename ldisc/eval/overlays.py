"""Prediction overlays: the test image with the prediction filled in red and the truth outlined in green."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

PRED_COLOUR = np.array([255, 40, 40], dtype=np.float32)
TRUTH_COLOUR = np.array([40, 255, 40], dtype=np.uint8)


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` that touch a background pixel (4-neighbourhood)."""
    padded = np.pad(mask, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def compose_overlay(image: np.ndarray, truth: np.ndarray, prob: np.ndarray, threshold: float = 0.5,
                    scale: int = 1) -> Image.Image:
    """RGB overlay: image (S,S,3) u8, truth (S,S) bool, prob (S,S) u8 (0–255)."""
    img = image.astype(np.float32)
    pred = prob >= threshold * 255
    img[pred] = 0.5 * img[pred] + 0.5 * PRED_COLOUR
    out = img.clip(0, 255).astype(np.uint8)
    out[_outline(truth.astype(bool))] = TRUTH_COLOUR
    pil = Image.fromarray(out)
    return pil.resize((pil.width * scale, pil.height * scale), Image.Resampling.NEAREST) if scale > 1 else pil


def save_overlays(folder: str | Path, overlays: list[dict], scale: int = 2) -> list[Path]:
    """Write each overlay as ``<k>_<name>.png`` into ``folder``; returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, ov in enumerate(overlays):
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", str(ov["name"]))
        path = folder / f"{k}_{name}.png"
        compose_overlay(ov["image"], ov["truth"], ov["prob"], scale=scale).save(path)
        paths.append(path)
    return paths
