"""Pictures for the application tools: heat-maps with landmarks, masks over images."""
from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw

COLOURS = ((0, 255, 255), (255, 255, 0), (0, 255, 0), (255, 0, 255), (255, 128, 0), (255, 255, 255))


def heat_overlay(rgb: np.ndarray, heat: np.ndarray, points: dict[str, tuple[float, float]],
                 alpha: float = 0.55) -> Image.Image:
    """``heat`` (any size, higher = better) stretched to [0, 1], coloured, blended over the image;
    a cross and the name at every point (image pixels)."""
    h, w = rgb.shape[:2]
    lo, hi = float(heat.min()), float(heat.max())
    scaled = (heat - lo) / (hi - lo) if hi > lo else np.zeros_like(heat)
    colour = (colormaps["inferno"](scaled)[..., :3] * 255).astype(np.uint8)
    colour = np.asarray(Image.fromarray(colour).resize((w, h), Image.BILINEAR), dtype=np.float32)
    out = Image.fromarray((alpha * colour + (1 - alpha) * rgb.astype(np.float32)).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    r = max(3, round(0.02 * max(h, w)))
    for i, (name, (x, y)) in enumerate(points.items()):
        c = COLOURS[i % len(COLOURS)]
        draw.line([(x - r, y), (x + r, y)], fill=c, width=max(1, r // 3))
        draw.line([(x, y - r), (x, y + r)], fill=c, width=max(1, r // 3))
        draw.text((x + r + 1, y - r - 1), name, fill=c)
    return out


def mask_overlay(rgb: np.ndarray, mask: np.ndarray, colour=(0, 255, 0), alpha: float = 0.5) -> Image.Image:
    """Binary ``mask`` (image size) painted over the image."""
    out = rgb.astype(np.float32).copy()
    m = mask.astype(bool)
    out[m] = (1 - alpha) * out[m] + alpha * np.asarray(colour, np.float32)
    return Image.fromarray(out.astype(np.uint8))
