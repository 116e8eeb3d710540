"""Procedural frontal chest radiographs with exact lung, heart, clavicle, pneumothorax masks.

The image is built as a sum of X-ray attenuations (soft tissue, mediastinum, heart, bones,
lung markings, minus the air in the lungs), then compressed to intensities, so the
ordering bone > heart/soft tissue > lung holds by construction.
"""

from __future__ import annotations

import numpy as np

from ._common import (
    Similarity,
    as_xy,
    draw_disc,
    draw_polygon,
    draw_polyline,
    fractal_noise,
    layer_mask,
    new_layer,
    pixel_axes,
    polygon_mask,
    blurred_sum,
    soften,
    soften_mask,
)
from .shapes import Sprout, TreeStyle, grow_tree
from .sites import XRAY_SITES, finish, pick_site
from .xray_anatomy import ChestAnatomy, collapsed_lung, sample_anatomy

XRAY_MASKS = ("lung", "heart", "clavicle", "pneumothorax")
# "right"/"left" are the patient's sides: on a PA radiograph the patient's right is on the
# image's left.
XRAY_LANDMARKS = (
    "lung_apex_right",
    "lung_apex_left",
    "costophrenic_right",
    "costophrenic_left",
    "carina",
)

# Attenuation of each structure (arbitrary units; the sum is compressed to intensity).
_SOFT_TISSUE = 0.55
_LUNG_AIR = 0.40
_MEDIASTINUM = 0.22
_HEART = 0.16
_SPINE = 0.12
_POSTERIOR_RIB = 0.13
_ANTERIOR_RIB = 0.05
_CLAVICLE = 0.16
_MARKINGS = 0.10
_PNEUMOTHORAX_AIR = 0.06
_PLEURAL_LINE = 0.10
_AIRWAY = 0.15
_ABDOMEN = 0.16
_GASTRIC_BUBBLE = 0.2
_COMPRESSION = 1.5  # intensity = 1 - exp(-_COMPRESSION * attenuation), rescaled
_MAX_DENSITY = 1.3


def _frame(rng: np.random.Generator, size: int) -> Similarity:
    """Patient position in the image: scale, small rotation, shift (never mirrored)."""
    return Similarity(
        scale=size / 2 * rng.uniform(0.84, 0.98),
        angle=float(np.clip(rng.normal(0.0, 0.04), -0.1, 0.1)),
        offset=tuple(size / 2 + rng.normal(0.0, 0.02 * size, 2)),
    )


def _lung_markings(rng, chest: ChestAnatomy, frame: Similarity, size: int) -> np.ndarray:
    """Pulmonary vessels branching out of both hila (an 8-bit layer, as float in [0, 1])."""
    unit = frame.scale
    style = TreeStyle(step=max(1.0, 0.012 * unit), wiggle=0.08, child_spacing=0.12 * unit,
                      child_width=(0.55, 0.8), child_length=(0.4, 0.7), min_width=0.5,
                      max_depth=3, max_pieces=90)
    sprouts = []
    for hilum, outward in zip(chest.hila, (np.pi, 0.0)):
        origin = frame.points(hilum)
        for spread in np.linspace(-1.3, 1.3, 6) + rng.normal(0.0, 0.12, 6):
            direction = outward + spread if outward == 0.0 else outward - spread
            sprouts.append(Sprout(origin, frame.direction(direction), 0.018 * unit,
                                  unit * rng.uniform(0.45, 0.7)))
    layer = new_layer(size)
    for piece in grow_tree(rng, sprouts, style):
        draw_polyline(layer, piece.points, piece.width, 255 * min(1.0, piece.width))
    return soften(layer, size / 512 * 0.8)


def _bones(chest: ChestAnatomy, frame: Similarity, size: int, blur: float, lung: np.ndarray):
    """Attenuation of ribs, spine and clavicles (ribs fade outside the lungs), and the
    clavicle mask."""
    unit = frame.scale
    posterior, anterior, spine, clavicles = (new_layer(size) for _ in range(4))
    for rib in chest.posterior_ribs:
        draw_polyline(posterior, frame.points(rib), 0.04 * unit)
    for rib in chest.anterior_ribs:
        draw_polyline(anterior, frame.points(rib), 0.05 * unit)
    for vertebra in chest.vertebrae:
        draw_polygon(spine, frame.points(vertebra))
    for clavicle in chest.clavicles:
        draw_polyline(clavicles, frame.points(clavicle), 0.05 * unit)
    ribs = layer_mask(posterior) * (0.45 + 0.55 * lung)
    parts = [(ribs, _POSTERIOR_RIB), (layer_mask(anterior) & lung, _ANTERIOR_RIB),
             (layer_mask(spine), _SPINE), (layer_mask(clavicles), _CLAVICLE)]
    return blurred_sum(size, parts, blur, 0.6), layer_mask(clavicles)


def _pneumothorax(rng, lung: np.ndarray, side_mask: np.ndarray, frame: Similarity, size: int):
    """Mask of the air between chest wall and collapsed lung, and the visceral pleural line."""
    inner = frame.points(collapsed_lung(rng, lung))
    region = side_mask & ~polygon_mask(size, inner)
    line = new_layer(size)
    draw_polyline(line, np.vstack([inner, inner[:1]]), max(1.0, size / 400))
    near = soften_mask(region, max(1.5, size / 256)) > 0.02
    return region, soften(line, 0.5 * size / 512) * near


def render_xray(rng: np.random.Generator, size: int, pneumothorax: bool, site: int | None):
    """Draw one chest radiograph: (uint8 HxW image, masks, landmarks, site index)."""
    site_index, look = pick_site(rng, site, XRAY_SITES)
    chest = sample_anatomy(rng)
    frame = _frame(rng, size)
    blur = size / 512 * (1.0 + look.blur)

    body = polygon_mask(size, frame.points(chest.body))
    heart = polygon_mask(size, frame.points(chest.heart))
    mediastinum = polygon_mask(size, frame.points(chest.mediastinum))
    sides = [polygon_mask(size, frame.points(lung)) & ~heart & ~mediastinum
             for lung in chest.lungs]
    lung = sides[0] | sides[1]

    xs, ys = pixel_axes(size)
    across = (xs - np.float32(frame.offset[0])) / np.float32(frame.scale)
    down = (ys - np.float32(frame.offset[1])) / np.float32(frame.scale)
    thickness = 1.0 - 0.3 * across * across  # the body is thicker centrally
    below_diaphragm = np.clip((down - np.float32(chest.diaphragm_level)) * 4.0, 0.0, 1.0)
    below_diaphragm = below_diaphragm * np.clip(1.0 - across * across, 0.0, 1.0)  # liver, spleen
    knob, airways = new_layer(size), new_layer(size)
    draw_disc(knob, frame.points(chest.aortic_knob[:2]), chest.aortic_knob[2] * frame.scale)
    draw_polyline(airways, frame.points(chest.trachea), 0.055 * frame.scale)
    for bronchus in chest.bronchi:
        draw_polyline(airways, frame.points(bronchus), 0.035 * frame.scale)
    ptx = np.zeros((size, size), bool)
    if pneumothorax:
        side = int(rng.integers(2))
        ptx, pleural_line = _pneumothorax(rng, chest.lungs[side], sides[side], frame, size)
    parts = [
        (body * thickness, _SOFT_TISSUE), (body * below_diaphragm, _ABDOMEN),
        (mediastinum, _MEDIASTINUM),
        (layer_mask(knob), _MEDIASTINUM * 0.6), (heart & ~mediastinum, _HEART),
        (heart & (below_diaphragm > 0), -_HEART), (lung, -_LUNG_AIR),
        (layer_mask(airways) & ~lung, -_AIRWAY), (mediastinum & heart, _HEART * 0.5), (ptx, -_PNEUMOTHORAX_AIR),
    ]
    if chest.gastric_bubble is not None:
        bubble = polygon_mask(size, frame.points(chest.gastric_bubble)) & ~lung
        parts.append((bubble, -_GASTRIC_BUBBLE))
    density = blurred_sum(size, parts, 1.5 * blur, _MAX_DENSITY)

    aerated = lung & ~ptx
    markings = _lung_markings(rng, chest, frame, size) * np.float32(_MARKINGS)
    markings += fractal_noise(rng, size, 24, 2) * np.float32(0.012)
    density += markings * aerated
    if pneumothorax:
        density += pleural_line * np.float32(_PLEURAL_LINE)
    bone, clavicle = _bones(chest, frame, size, blur, lung)
    density += bone * body

    image = 1.0 - np.exp(np.float32(-_COMPRESSION) * np.maximum(density, 0.0))
    image *= np.float32(0.92 / (1.0 - np.exp(-_COMPRESSION * _MAX_DENSITY)))
    masks = {"lung": lung, "heart": heart, "clavicle": clavicle & body, "pneumothorax": ptx}
    landmarks = {name: as_xy(frame.points(point)) for name, point in chest.lung_landmarks.items()}
    landmarks["carina"] = as_xy(frame.points(chest.carina))
    return finish(image, look, rng), masks, {n: landmarks[n] for n in XRAY_LANDMARKS}, site_index
