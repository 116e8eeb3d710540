"""Vessel-tree masks of OTHER modalities, the shape prior of shape-guided fundus segmentation.

The paper trains its discriminator on vessel masks from OCTA or DSA, never on fundus labels. These
generators give masks whose style differs on purpose from the fundus generator's tree (a few arcades
from the disc, calibre ≈ 8% of the disc diameter, tapering over ~4 generations):

- ``octa``: en-face OCT angiography of the macula — a dense, tortuous capillary mesh (1–2 px at
  256 px, many short branches) around a foveal avascular zone, with a few larger vessels
  arriving from the border; most of the field is vessel-dense.
- ``dsa``: digital subtraction angiography — one or two thick trunks entering from the border,
  long smooth branches leaving at wide angles, calibre halving per generation.

``vessel_masks(style, n, size, seed)`` gives n bool masks; ``style="mixed"`` alternates both.
"""
from __future__ import annotations

import numpy as np

from ._common import draw_disc, draw_polyline, layer_mask, new_layer
from .shapes import Sprout, TreeStyle, grow_tree

STYLES = ("octa", "dsa", "mixed")


def _rasterise(size: int, pieces, scale: float = 1.0) -> np.ndarray:
    layer = new_layer(size)
    for piece in pieces:
        draw_polyline(layer, piece.points, max(1.0, piece.width * scale))
    return layer_mask(layer)


def octa_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """Dense capillary mesh around a foveal avascular zone, plus a few larger feeding vessels."""
    centre = size / 2 + rng.normal(0, 0.04 * size, 2)
    faz = size * rng.uniform(0.05, 0.09)

    def stop(points: np.ndarray) -> np.ndarray:
        outside = (points < 0).any(1) | (points >= size).any(1)
        return outside | (((points - centre) ** 2).sum(1) < faz ** 2)

    unit = size / 256
    capillary = TreeStyle(step=1.5 * unit, wiggle=0.28, child_spacing=6 * unit, child_angle=(0.8, 1.6),
                          child_width=(0.8, 1.0), child_length=(0.5, 0.9), taper=0.97, min_width=0.9 * unit,
                          max_depth=3, max_pieces=900)
    sprouts = []
    for _ in range(int(110 * rng.uniform(0.8, 1.2))):
        origin = rng.uniform(0, size, 2)
        sprouts.append(Sprout(origin, float(rng.uniform(-np.pi, np.pi)), 1.2 * unit, size * rng.uniform(0.08, 0.2)))
    pieces = grow_tree(rng, sprouts, capillary, stop)
    feeding = TreeStyle(step=2 * unit, wiggle=0.06, child_spacing=30 * unit, child_angle=(0.6, 1.2),
                        child_width=(0.5, 0.7), min_width=1.2 * unit, max_depth=2, max_pieces=40)
    big = []
    for _ in range(rng.integers(3, 6)):
        a = rng.uniform(-np.pi, np.pi)
        origin = np.clip(centre + np.array([np.cos(a), np.sin(a)]) * size * 0.7, 0, size - 1)
        big.append(Sprout(origin, float(a + np.pi + rng.normal(0, 0.3)), 3.0 * unit, size * 0.6))
    pieces += grow_tree(rng, big, feeding, stop)
    mask = _rasterise(size, pieces)
    faz_layer = new_layer(size)
    draw_disc(faz_layer, centre, faz)
    return mask & ~layer_mask(faz_layer)


def dsa_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """Thick trunks from the border, long smooth branches at wide angles, calibre halving."""
    unit = size / 256
    style = TreeStyle(step=2 * unit, wiggle=0.035, child_spacing=28 * unit, child_angle=(0.7, 1.4),
                      child_width=(0.4, 0.6), child_length=(0.45, 0.8), taper=0.93, min_width=1.0 * unit,
                      max_depth=5, max_pieces=120)

    def stop(points: np.ndarray) -> np.ndarray:
        return (points < -2).any(1) | (points >= size + 2).any(1)

    sprouts = []
    for _ in range(rng.integers(1, 3)):
        side = rng.integers(4)
        t = rng.uniform(0.2, 0.8) * size
        origin, angle = [(np.array([t, 0.0]), np.pi / 2), (np.array([size, t]), np.pi),
                         (np.array([t, size]), -np.pi / 2), (np.array([0.0, t]), 0.0)][side]
        sprouts.append(Sprout(origin.astype(float), float(angle + rng.normal(0, 0.25)),
                              size * rng.uniform(0.02, 0.03), size * rng.uniform(0.9, 1.3)))
    return _rasterise(size, grow_tree(rng, sprouts, style, stop))


def vessel_masks(style: str, n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` bool size × size masks of ``style`` (octa | dsa | mixed: alternating), seeded."""
    if style not in STYLES:
        raise ValueError(f"unknown vessel style {style!r}; choose one of {STYLES}")
    out = []
    for i in range(int(n)):
        rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(i,)))
        kind = style if style != "mixed" else ("octa", "dsa")[i % 2]
        out.append(octa_mask(rng, size) if kind == "octa" else dsa_mask(rng, size))
    return out
