"""Geometric building blocks: branching vessel trees and smooth closed outlines.

Both generators use these: the fundus for its retinal vessel tree, the chest X-ray for
its lung markings (pulmonary vessels) and for organ outlines (lungs, heart, body).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class VesselPiece:
    """A stretch of vessel drawn with one width: an (n, 2) polyline of (x, y) points."""

    points: np.ndarray
    width: float
    depth: int


@dataclass(frozen=True)
class TreeStyle:
    """How a vessel tree grows. Lengths are in pixels, angles in radians."""

    step: float  # distance between polyline points
    wiggle: float  # std of the random turn per step
    child_spacing: float  # mean distance between side branches along a vessel
    child_angle: tuple[float, float] = (0.45, 1.1)  # side branches leave at this angle range
    child_width: tuple[float, float] = (0.45, 0.75)  # child width / parent width
    child_length: tuple[float, float] = (0.35, 0.65)  # child length / parent length
    taper: float = 0.88  # parent width factor after each side branch
    min_width: float = 0.6  # branches thinner than this are not grown
    max_depth: int = 4
    max_pieces: int = 160


@dataclass(frozen=True)
class Sprout:
    """One vessel to grow: where it starts, its direction, width and length."""

    origin: np.ndarray
    angle: float
    width: float
    length: float
    steer_to: float | None = None  # direction it bends towards, if any
    steer_length: float = 1.0  # distance over which ~63% of the bend happens
    depth: int = 0


def _wrap(angle):
    return (angle + np.pi) % (2 * np.pi) - np.pi


def _trace(rng: np.random.Generator, sprout: Sprout, style: TreeStyle):
    """Polyline points and local directions of one vessel (before stopping)."""
    n = max(2, int(np.ceil(sprout.length / style.step)))
    angles = sprout.angle + np.cumsum(rng.normal(0.0, style.wiggle, n))
    if sprout.steer_to is not None:
        travelled = np.arange(n) * style.step
        bend = _wrap(sprout.steer_to - sprout.angle)
        angles = angles + bend * (1.0 - np.exp(-travelled / sprout.steer_length))
    steps = style.step * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    points = np.vstack([sprout.origin[None, :], sprout.origin + np.cumsum(steps, axis=0)])
    return points, np.concatenate([[angles[0]], angles])


def grow_tree(
    rng: np.random.Generator,
    sprouts: list[Sprout],
    style: TreeStyle,
    stop: Callable[[np.ndarray], np.ndarray] | None = None,
) -> list[VesselPiece]:
    """Grow branching, tapering vessels from ``sprouts``.

    Each vessel is a random walk in direction (optionally bending towards ``steer_to``);
    side branches leave it at random places, thinner and shorter, and the parent tapers
    after each. ``stop(points) -> bool array`` cuts a vessel at its first flagged point
    (e.g. leaving the field of view or entering the foveal avascular zone).
    """
    pieces: list[VesselPiece] = []
    queue = list(sprouts)
    while queue and len(pieces) < style.max_pieces:
        sprout = queue.pop(0)
        points, angles = _trace(rng, sprout, style)
        if stop is not None:
            flagged = np.flatnonzero(stop(points))
            if flagged.size:
                points, angles = points[: flagged[0]], angles[: flagged[0]]
        n = len(points)
        if n < 2:
            continue
        expected = (n - 1) * style.step / style.child_spacing
        count = rng.poisson(expected) if sprout.depth < style.max_depth else 0
        splits = np.unique(rng.integers(max(1, n // 10), n - 1, count)) if count and n > 3 else []
        width = sprout.width
        start = 0
        for split in list(splits) + [n - 1]:
            if split > start:
                pieces.append(VesselPiece(points[start : split + 1], width, sprout.depth))
            if split == n - 1:
                break
            side = rng.choice([-1.0, 1.0])
            child_width = width * rng.uniform(*style.child_width)
            if child_width >= style.min_width:
                queue.append(
                    Sprout(
                        origin=points[split],
                        angle=float(angles[split] + side * rng.uniform(*style.child_angle)),
                        width=child_width,
                        length=sprout.length * rng.uniform(*style.child_length),
                        depth=sprout.depth + 1,
                    )
                )
            width *= style.taper
            start = split
    return pieces


def closed_spline(control: np.ndarray, samples_per_segment: int = 12) -> np.ndarray:
    """Smooth closed curve through the (k, 2) control points (centripetal-free Catmull-Rom).

    The curve passes through every control point, so landmarks placed on control points lie
    exactly on the outline.
    """
    p0 = np.roll(control, 1, axis=0)
    p1 = control
    p2 = np.roll(control, -1, axis=0)
    p3 = np.roll(control, -2, axis=0)
    t = np.linspace(0.0, 1.0, samples_per_segment, endpoint=False)[None, :, None]
    t2, t3 = t * t, t * t * t
    curve = 0.5 * (
        2 * p1[:, None]
        + (p2 - p0)[:, None] * t
        + (2 * p0 - 5 * p1 + 4 * p2 - p3)[:, None] * t2
        + (3 * p1 - p0 - 3 * p2 + p3)[:, None] * t3
    )
    return curve.reshape(-1, 2)


def open_curve(control: np.ndarray, samples: int = 32) -> np.ndarray:
    """Smooth open curve through the (k, 2) control points (Catmull-Rom, ends repeated)."""
    padded = np.vstack([control[:1], control, control[-1:]])
    per_segment = max(2, samples // max(1, len(control) - 1))
    closed = closed_spline(padded, per_segment)
    # drop the segments that wrap from the last point back to the first
    return closed[per_segment : per_segment * (len(control)) + 1]


def ellipse_outline(center, axes, angle: float, samples: int = 64) -> np.ndarray:
    """(samples, 2) points on an ellipse with semi-axes ``axes`` rotated by ``angle``."""
    t = np.linspace(0.0, 2 * np.pi, samples, endpoint=False)
    local = np.stack([axes[0] * np.cos(t), axes[1] * np.sin(t)], axis=1)
    c, s = np.cos(angle), np.sin(angle)
    return local @ np.array([[c, s], [-s, c]]) + np.asarray(center, dtype=np.float64)
