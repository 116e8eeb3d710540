"""Procedural colour fundus photographs with exact vessel, disc, cup and lesion masks.

Anatomy is laid out in a canonical frame (origin at the optic disc centre, +x pointing
temporally towards the fovea, pixels as units) and mapped to the image by one similarity
transform (tilt, left/right eye mirror, position), so masks, landmarks and image agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._common import (
    Similarity,
    as_xy,
    draw_disc,
    draw_polyline,
    ellipse_radius,
    fractal_noise,
    layer_mask,
    new_layer,
    patch_axes,
    pixel_axes,
    smooth_noise,
    soften,
    squared_distance,
)
from .shapes import Sprout, TreeStyle, grow_tree
from .sites import FUNDUS_SITES, SiteLook, finish, pick_site

FUNDUS_MASKS = ("vessel", "disc", "cup", "exudate", "haemorrhage")
FUNDUS_LANDMARKS = ("disc_center", "fovea")

# Optical absorption of blood per RGB channel (green is absorbed most, red least).
_BLOOD_ABSORPTION = np.array([0.26, 0.70, 0.66], np.float32)
_ARTERY_STRENGTH = 0.62  # arteries (oxygenated, thinner walls) absorb less than veins
# Macular pigment darkens green and blue far more than red.
_MACULA_ABSORPTION = np.array([0.13, 0.55, 0.62], np.float32)
_HAEMORRHAGE_ABSORPTION = np.array([0.35, 0.80, 0.78], np.float32)


@dataclass(frozen=True)
class FundusLayout:
    """Where the anatomy sits in the image (all lengths in pixels)."""

    size: int
    fov_center: np.ndarray
    fov_radius: float
    disc_center: np.ndarray
    disc_axes: tuple[float, float]  # semi-axes; their geometric mean is half the disc diameter
    disc_angle: float
    cup_center: np.ndarray
    cup_axes: tuple[float, float]
    fovea: np.ndarray
    disc_diameter: float
    frame: Similarity  # canonical (disc at origin, fovea on +x) -> pixels


def sample_layout(rng: np.random.Generator, size: int) -> FundusLayout:
    """Random but anatomically plausible placement of field of view, disc, cup and fovea."""
    fov_radius = size * rng.uniform(0.44, 0.53)
    fov_center = size / 2 + rng.normal(0.0, 0.015 * size, 2)
    disc_diameter = fov_radius * rng.uniform(0.25, 0.30)
    disc_on_right = bool(rng.random() < 0.5)  # right eye: disc on the image's right
    tilt = float(np.clip(rng.normal(0.0, 0.08), -0.2, 0.2))
    axis = np.array([np.cos(tilt), np.sin(tilt)]) * (-1.0 if disc_on_right else 1.0)
    normal = np.array([-axis[1], axis[0]])
    fovea = (
        fov_center
        + axis * fov_radius * rng.uniform(0.0, 0.12)
        + normal * fov_radius * rng.normal(0.0, 0.03)
    )
    disc_center = fovea - axis * disc_diameter * rng.uniform(2.35, 2.65)
    ovality = rng.uniform(0.0, 0.08)  # discs are slightly taller than wide
    disc_axes = (disc_diameter / 2 * np.exp(-ovality), disc_diameter / 2 * np.exp(ovality))
    cup_ratio = rng.uniform(0.3, 0.65)
    frame = Similarity(1.0, tilt, tuple(disc_center), mirror_x=disc_on_right)
    cup_shift = frame.points([disc_axes[0] * (1 - cup_ratio) * rng.uniform(0.0, 0.3), 0.0])
    return FundusLayout(
        size=size,
        fov_center=fov_center,
        fov_radius=float(fov_radius),
        disc_center=disc_center,
        disc_axes=disc_axes,
        disc_angle=tilt + float(rng.normal(0.0, 0.15)),
        cup_center=cup_shift,
        cup_axes=(disc_axes[0] * cup_ratio * rng.uniform(0.9, 1.0), disc_axes[1] * cup_ratio),
        fovea=fovea,
        disc_diameter=float(disc_diameter),
        frame=frame,
    )


def _vessel_sprouts(rng: np.random.Generator, lay: FundusLayout, width: float) -> list[Sprout]:
    """Main vessels of one kind (arteries or veins) leaving the disc, in canonical angles.

    Temporal arcades bend around the macula; nasal vessels run straighter; a few thin
    papillomacular vessels head for the macula.
    """
    dd, radius = lay.disc_diameter, lay.fov_radius
    origin = lay.frame.points([-dd * rng.uniform(0.0, 0.12), dd * rng.normal(0.0, 0.04)])
    sprouts = []
    for up in (-1.0, 1.0):  # -1: superior, +1: inferior (image y points down)
        start, bend_to = up * (np.pi / 2 - rng.uniform(0.0, 0.25)), -up * rng.uniform(0.35, 0.7)
        sprouts.append(
            Sprout(origin, lay.frame.direction(start), width, radius * rng.uniform(1.3, 1.7),
                   steer_to=lay.frame.direction(bend_to), steer_length=dd * rng.uniform(1.8, 2.6))
        )
        nasal = up * (np.pi / 2 + rng.uniform(0.4, 1.0))
        sprouts.append(Sprout(origin, lay.frame.direction(nasal), width * 0.75,
                              radius * rng.uniform(0.7, 1.0)))
        macular = up * rng.uniform(0.1, 0.5)
        sprouts.append(Sprout(origin, lay.frame.direction(macular), width * 0.35,
                              dd * rng.uniform(1.2, 2.0)))
    return sprouts


def _vessel_layer(rng: np.random.Generator, lay: FundusLayout):
    """Veins, then arteries, rasterised into one 8-bit layer whose value is the vessel's
    absorption strength; vessels stop at the edge of the field of view and at the fovea."""
    dd = lay.disc_diameter
    style = TreeStyle(step=max(1.0, dd * 0.04), wiggle=0.07, child_spacing=dd * 0.8,
                      child_length=(0.25, 0.55), min_width=0.6, max_depth=4, max_pieces=100)
    avoid_radius2 = (dd * rng.uniform(0.25, 0.4)) ** 2
    fov_radius2 = (lay.fov_radius * 1.02) ** 2

    def stop(points: np.ndarray) -> np.ndarray:
        to_fovea = ((points - lay.fovea) ** 2).sum(axis=1)
        return (((points - lay.fov_center) ** 2).sum(axis=1) > fov_radius2) | (
            to_fovea < avoid_radius2
        )

    vein_width = dd * rng.uniform(0.07, 0.09)
    layer = new_layer(lay.size)
    kinds = ((vein_width, 255.0), (vein_width * rng.uniform(0.7, 0.85), 255.0 * _ARTERY_STRENGTH))
    for width, strength in kinds:
        for piece in grow_tree(rng, _vessel_sprouts(rng, lay, width), style, stop):
            draw_polyline(layer, piece.points, piece.width, strength * min(1.0, piece.width))
    return layer


def _background(rng: np.random.Generator, lay: FundusLayout, look: SiteLook) -> np.ndarray:
    """Orange-red textured fundus with vignetting, uneven illumination and a dark macula."""
    size = lay.size
    luminance = fractal_noise(rng, size, 14, 2)
    luminance *= np.float32(0.025)
    luminance += smooth_noise(rng, size, 3) * np.float32(0.07) + np.float32(1.0)
    xs, ys = pixel_axes(size)
    gradient = (rng.normal(0.0, 0.08, 2) / lay.fov_radius).astype(np.float32)
    luminance += (xs - np.float32(lay.fov_center[0])) * gradient[0] + (
        ys - np.float32(lay.fov_center[1])
    ) * gradient[1]
    edge = squared_distance(size, lay.fov_center) / np.float32(lay.fov_radius**2)
    luminance *= 1.0 - np.float32(look.vignetting) * (0.4 * edge + 0.6 * edge * edge)
    base = (np.array([0.80, 0.33, 0.23]) * np.exp(rng.normal(0.0, 0.07, 3))).astype(np.float32)
    image = luminance[..., None] * base

    window, xs, ys = patch_axes(size, lay.fovea, 3.0 * lay.disc_diameter)
    to_fovea = ((xs - np.float32(lay.fovea[0])) ** 2 + (ys - np.float32(lay.fovea[1])) ** 2) / (
        np.float32(lay.disc_diameter**2)
    )
    depth = np.float32(rng.uniform(0.6, 1.0))
    macula = depth * np.exp(-to_fovea / np.float32(2 * 0.4**2)) + 0.2 * np.exp(-to_fovea / 2.0)
    image[window] -= (luminance[window] * macula)[..., None] * (base * _MACULA_ABSORPTION)
    return image


def _paint_disc(rng: np.random.Generator, image: np.ndarray, lay: FundusLayout, look: SiteLook):
    """Blend the yellowish optic disc and its brighter cup into ``image``; return their masks."""
    size = lay.size
    edge_px = max(0.8, lay.size / 512 * (1.5 + look.blur))
    window, xs, ys = patch_axes(size, lay.disc_center, lay.disc_diameter * 1.2)
    rho = ellipse_radius(xs, ys, lay.disc_center, lay.disc_axes, lay.disc_angle)
    rho_cup = ellipse_radius(xs, ys, lay.cup_center, lay.cup_axes, lay.disc_angle)
    patch = image[window]
    halo = 0.12 * np.exp(-(((rho - 1.0) / 0.35) ** 2)) * (rho > 1.0)
    patch *= (1.0 + halo)[..., None]
    rim_colour = np.array([1.0, 0.74, 0.48]) * np.exp(rng.normal(0.0, 0.05, 3))
    alpha = np.clip((1.0 - rho) * (lay.disc_diameter / 2 / edge_px) + 0.5, 0.0, 1.0)
    shade = (0.88 + 0.12 * np.clip(1.0 - rho, 0.0, 1.0))[..., None]
    patch[:] = patch * (1 - alpha[..., None]) + rim_colour * shade * alpha[..., None]
    cup_colour = np.array([1.0, 0.93, 0.80]) * np.exp(rng.normal(0.0, 0.03, 3))
    cup_edge = lay.cup_axes[0] / (edge_px * rng.uniform(1.5, 3.0))
    cup_alpha = np.clip((1.0 - rho_cup) * cup_edge + 0.5, 0.0, 1.0)[..., None]
    patch[:] = patch * (1 - cup_alpha) + cup_colour * cup_alpha

    disc = np.zeros((size, size), bool)
    cup = np.zeros((size, size), bool)
    disc[window] = rho < 1.0
    cup[window] = (rho_cup < 1.0) & (rho < 1.0)
    return disc, cup


def _lesion_layers(rng: np.random.Generator, lay: FundusLayout):
    """Hard exudates (clustered small blobs) and haemorrhages/microaneurysms (dots, blots)."""
    dd = lay.disc_diameter
    exudates, haemorrhages = new_layer(lay.size), new_layer(lay.size)
    for _ in range(rng.integers(1, 5)):
        angle, dist = rng.uniform(0, 2 * np.pi), dd * rng.uniform(0.5, 2.2)
        cluster = lay.fovea + dist * np.array([np.cos(angle), np.sin(angle)])
        count = rng.integers(3, 25)
        centres = cluster + rng.normal(0.0, 0.3 * dd, (count, 2))
        for centre, radius in zip(centres, dd * rng.uniform(0.01, 0.05, count)):
            draw_disc(exudates, centre, radius)
    count = rng.integers(3, 20)
    angles, dists = rng.uniform(0, 2 * np.pi, count), dd * np.sqrt(rng.uniform(0.05, 9.0, count))
    centres = lay.fovea + dists[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    radii = dd * np.where(rng.random(count) < 0.5, 0.015, rng.uniform(0.03, 0.09, count))
    for centre, radius in zip(centres, radii):
        draw_disc(haemorrhages, centre, radius)
    return exudates, haemorrhages


def _bounding_window(layer, pad: int):
    """(rows, cols) slices around everything drawn in ``layer``, padded; None if empty."""
    box = layer.getbbox()
    if box is None:
        return None
    x0, y0, x1, y1 = box
    width, height = layer.size
    return (slice(max(0, y0 - pad), min(height, y1 + pad)),
            slice(max(0, x0 - pad), min(width, x1 + pad)))


def render_fundus(rng: np.random.Generator, size: int, lesions: bool, site: int | None):
    """Draw one fundus photograph: (uint8 HxWx3 image, masks, landmarks, site index)."""
    site_index, look = pick_site(rng, site, FUNDUS_SITES)
    lay = sample_layout(rng, size)
    soft = size / 512 * (0.5 + look.blur)
    image = _background(rng, lay, look)
    disc, cup = _paint_disc(rng, image, lay, look)

    vessels = _vessel_layer(rng, lay)
    absorption = _BLOOD_ABSORPTION * np.float32(rng.uniform(0.8, 1.1))
    image *= 1.0 - soften(vessels, soft)[..., None] * absorption
    to_fov_center = squared_distance(size, lay.fov_center)
    fov = to_fov_center < np.float32(lay.fov_radius**2)
    masks = {"vessel": layer_mask(vessels) & fov, "disc": disc, "cup": cup}

    masks["exudate"] = np.zeros((size, size), bool)
    masks["haemorrhage"] = np.zeros((size, size), bool)
    if lesions:
        exudates, haemorrhages = _lesion_layers(rng, lay)
        yellow = np.array([0.98, 0.86, 0.38], np.float32) * np.float32(rng.uniform(0.85, 1.05))
        for layer, name in ((exudates, "exudate"), (haemorrhages, "haemorrhage")):
            window = _bounding_window(layer, pad=int(3 * soft) + 2)
            if window is None:
                continue
            alpha = soften(layer.crop((window[1].start, window[0].start,
                                       window[1].stop, window[0].stop)), soft)[..., None]
            patch = image[window]
            if name == "exudate":  # blend towards bright yellow
                patch += alpha * (yellow - patch)
            else:  # dark red: blood absorbs green and blue most
                patch *= 1.0 - alpha * _HAEMORRHAGE_ABSORPTION
            masks[name][window] = layer_mask(layer)[window] & fov[window]

    # anti-aliased rim: R - r is about (R^2 - r^2) / 2R near the rim, with no square root
    support = (np.float32(lay.fov_radius**2) - to_fov_center) / np.float32(2 * lay.fov_radius)
    support = np.clip(support + np.float32(0.5), 0.0, 1.0, out=support)
    pixels = finish(image, look, rng, support)
    landmarks = {"disc_center": as_xy(lay.disc_center), "fovea": as_xy(lay.fovea)}
    return pixels, {name: masks[name] for name in FUNDUS_MASKS}, landmarks, site_index
