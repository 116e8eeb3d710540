"""Outlines of a frontal (PA) chest radiograph in a canonical frame.

Canonical frame: x from -1 (image left = the patient's right) to +1, y from -1 (top) to +1
(bottom), origin mid-chest. Every shape is a point list here; the renderer maps them to
pixels with one similarity transform, so masks, landmarks and image agree exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .shapes import closed_spline, ellipse_outline, open_curve

# Patient's right lung (image left), clockwise from the apex. Index 0 is the apex and
# _COSTOPHRENIC the lateral costophrenic angle: both are landmarks, and the spline passes
# through its control points, so they lie on the lung outline.
_RIGHT_LUNG = np.array([
    (-0.36, -0.78), (-0.52, -0.71), (-0.66, -0.52), (-0.76, -0.22), (-0.82, 0.14),
    (-0.84, 0.50), (-0.68, 0.41), (-0.45, 0.33), (-0.24, 0.37), (-0.08, 0.40),
    (-0.07, 0.05), (-0.11, -0.25), (-0.19, -0.62), (-0.27, -0.75),
])
_APEX, _COSTOPHRENIC = 0, 5
_BODY_HALF = np.array([
    (-0.20, -1.25), (-0.22, -0.96), (-0.58, -0.88), (-0.94, -0.76),
    (-1.00, -0.40), (-0.98, 0.30), (-0.96, 1.25),
])
_MEDIASTINUM_HALF = np.array([
    (-0.12, -1.2), (-0.11, -0.60), (-0.12, -0.25), (-0.16, 0.10), (-0.14, 0.50),
])
# Posterior rib: from the spine up-and-out, then down along the lateral chest wall;
# anterior rib: from the lateral wall down and in, to the costal cartilage.
_POSTERIOR_RIB = np.array([(0.05, 0.0), (0.22, -0.05), (0.45, -0.04), (0.66, 0.04), (0.80, 0.16)])
_ANTERIOR_RIB = np.array([(0.80, 0.16), (0.84, 0.27), (0.72, 0.35), (0.50, 0.45), (0.30, 0.55)])
_CLAVICLE = np.array([(0.06, -0.66), (0.25, -0.69), (0.45, -0.76), (0.62, -0.80), (0.73, -0.78)])


@dataclass(frozen=True)
class ChestAnatomy:
    """One chest, as canonical outlines (arrays of (x, y) points)."""

    body: np.ndarray
    lungs: tuple[np.ndarray, np.ndarray]  # (patient right, patient left), closed outlines
    lung_landmarks: dict[str, np.ndarray]
    heart: np.ndarray
    mediastinum: np.ndarray
    aortic_knob: np.ndarray  # centre (x, y) and radius in the third entry
    trachea: np.ndarray  # open polyline ending at the carina
    bronchi: tuple[np.ndarray, np.ndarray]
    carina: np.ndarray
    hila: tuple[np.ndarray, np.ndarray]
    clavicles: tuple[np.ndarray, np.ndarray]
    posterior_ribs: list[np.ndarray]
    anterior_ribs: list[np.ndarray]
    vertebrae: list[np.ndarray]  # closed quadrilaterals
    gastric_bubble: np.ndarray | None
    diaphragm_level: float


def _mirror(points: np.ndarray) -> np.ndarray:
    return points * np.array([-1.0, 1.0])


def _jitter(rng: np.random.Generator, points: np.ndarray, std: float) -> np.ndarray:
    return points + rng.normal(0.0, std, points.shape)


def sample_anatomy(rng: np.random.Generator) -> ChestAnatomy:
    """A random chest: shapes, sizes and proportions vary within plausible limits."""
    width = rng.uniform(0.92, 1.06)  # chest breadth relative to the lungs
    inspiration = rng.uniform(0.92, 1.08)  # deeper breath: longer lungs, lower diaphragm
    stretch = np.array([1.0, inspiration])
    anchor = np.array([0.0, -0.8])  # lung height scales about the apices
    lungs, landmarks = [], {}
    for side, name in ((-1.0, "right"), (1.0, "left")):
        outline = _RIGHT_LUNG * np.array([-side, 1.0]) if side > 0 else _RIGHT_LUNG.copy()
        if side > 0:  # left hemidiaphragm sits a little lower, left medial border further out
            outline = outline + np.array([0.0, 0.03]) * (outline[:, 1:] > 0.2)
            outline[-5:-2, 0] += 0.04
        outline = _jitter(rng, (outline - anchor) * stretch + anchor, 0.012)
        outline[:, 0] *= width
        lungs.append(outline)
        landmarks[f"lung_apex_{name}"] = outline[_APEX]
        landmarks[f"costophrenic_{name}"] = outline[_COSTOPHRENIC]
    diaphragm = float(np.mean([lung[7, 1] for lung in lungs]))

    heart_size = rng.uniform(0.85, 1.12)
    heart_center = np.array([0.10 + rng.normal(0, 0.02), diaphragm - 0.12 * heart_size])
    heart = ellipse_outline(heart_center, (0.34 * heart_size * width, 0.23 * heart_size),
                            0.35 + rng.normal(0, 0.06), 64)

    mediastinum = np.vstack([_MEDIASTINUM_HALF, _mirror(_MEDIASTINUM_HALF)[::-1]])
    mediastinum = closed_spline(_jitter(rng, mediastinum, 0.008), 10)
    carina = np.array([rng.normal(-0.005, 0.01), -0.36 + rng.normal(0, 0.02)])
    trachea = np.array([(-0.01, -1.25), (-0.012, -0.8), carina])
    bronchi = tuple(
        open_curve(np.array([carina, carina + (0.09 * s, 0.09), carina + (0.19 * s, 0.19)]), 12)
        for s in (-1.0, 1.0)
    )
    hila = (np.array([-0.17, -0.12]) * [width, 1], np.array([0.17, -0.09]) * [width, 1])

    rib_gap = rng.uniform(0.095, 0.115) * inspiration
    posterior, anterior = [], []
    for side in (-1.0, 1.0):
        for i in range(11):
            shift = np.array([0.0, -0.76 + i * rib_gap + rng.normal(0, 0.006)])
            scale = np.array([side * width * (0.8 + 0.02 * min(i, 6)), 1.0 + 0.04 * i])
            posterior.append(open_curve(_POSTERIOR_RIB * scale + shift, 24))
            if i < 7:
                anterior.append(open_curve(_ANTERIOR_RIB * scale + shift, 24))

    clavicle_lift = rng.normal(0.0, 0.03)
    clavicles = tuple(
        open_curve(_jitter(rng, _CLAVICLE * [s * width, 1.0] + [0, clavicle_lift], 0.008), 24)
        for s in (-1.0, 1.0)
    )
    vertebrae = []
    for k in range(28):
        top = -1.15 + k * 0.085
        half = 0.06 + 0.0015 * k
        vertebrae.append(np.array([(-half, top), (half, top), (half, top + 0.068),
                                   (-half, top + 0.068)]))
    bubble = None
    if rng.random() < 0.6:
        bubble = ellipse_outline((0.42 * width, diaphragm + 0.12 + rng.uniform(0, 0.06)),
                                 (rng.uniform(0.06, 0.12), rng.uniform(0.04, 0.07)), 0.0, 24)
    body = _BODY_HALF * [width * rng.uniform(1.0, 1.08), 1.0]
    body = np.vstack([body, _mirror(body)[::-1]])
    return ChestAnatomy(
        body=closed_spline(body, 10),
        lungs=(closed_spline(lungs[0], 10), closed_spline(lungs[1], 10)),
        lung_landmarks=landmarks,
        heart=heart,
        mediastinum=mediastinum,
        aortic_knob=np.array([0.13 * width, -0.36 + rng.normal(0, 0.015), rng.uniform(0.06, 0.08)]),
        trachea=trachea,
        bronchi=bronchi,
        carina=carina,
        hila=hila,
        clavicles=clavicles,
        posterior_ribs=posterior,
        anterior_ribs=anterior,
        vertebrae=vertebrae,
        gastric_bubble=bubble,
        diaphragm_level=diaphragm,
    )


def collapsed_lung(rng: np.random.Generator, lung: np.ndarray) -> np.ndarray:
    """Outline of a partly collapsed lung: ``lung`` shrunk towards its lower medial corner,
    so that the apex and lateral wall retract most (where a pneumothorax shows upright)."""
    x_medial = lung[np.argmin(np.abs(lung[:, 0]))][0]
    anchor = np.array([x_medial, np.percentile(lung[:, 1], 80)])
    factor = np.array([rng.uniform(0.6, 0.85), rng.uniform(0.75, 0.9)])
    return anchor + (lung - anchor) * factor
