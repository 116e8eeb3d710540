"""Acquisition "sites": per-scanner/camera look (colour cast, gamma, contrast, noise).

Real multi-centre data differ by device and processing; LD must be robust to that, so
every synthetic image is rendered as if acquired at one of a few sites (chosen with the
``site`` argument, or at random) plus a small per-image jitter.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ._common import white_noise


@dataclass(frozen=True)
class SiteLook:
    """Photometric settings of one site. Gains are per RGB channel (X-ray uses their mean)."""

    name: str
    gain: tuple[float, float, float]
    gamma: float
    contrast: float
    brightness: float
    noise: float  # std of additive sensor noise, in [0, 1] intensity units
    vignetting: float  # fundus: darkening at the field-of-view edge (0..1)
    blur: float  # extra softness of fine structures, in pixels at 512 px


FUNDUS_SITES: tuple[SiteLook, ...] = (
    SiteLook("neutral", (1.00, 1.00, 1.00), 1.00, 1.00, 0.00, 0.012, 0.35, 0.0),
    SiteLook("warm", (1.04, 1.10, 0.80), 1.15, 1.05, -0.03, 0.018, 0.45, 0.3),
    SiteLook("pale", (0.95, 1.06, 1.12), 0.90, 0.90, 0.03, 0.010, 0.25, 0.6),
    SiteLook("dark-red", (1.02, 0.95, 0.88), 1.10, 1.10, -0.04, 0.022, 0.50, 0.2),
)

XRAY_SITES: tuple[SiteLook, ...] = (
    SiteLook("standard", (1.0, 1.0, 1.0), 1.00, 1.00, 0.00, 0.015, 0.0, 0.0),
    SiteLook("high-contrast", (1.0, 1.0, 1.0), 1.20, 1.25, -0.04, 0.020, 0.0, 0.2),
    SiteLook("soft", (1.0, 1.0, 1.0), 0.85, 0.80, 0.05, 0.010, 0.0, 0.8),
    SiteLook("noisy-portable", (1.0, 1.0, 1.0), 1.05, 0.90, 0.02, 0.035, 0.0, 0.4),
)


def pick_site(
    rng: np.random.Generator, site: int | None, sites: tuple[SiteLook, ...]
) -> tuple[int, SiteLook]:
    """The site index (given or random) and its look with a small per-image jitter."""
    if site is None:
        site = int(rng.integers(len(sites)))
    elif isinstance(site, bool) or not isinstance(site, (int, np.integer)):
        raise ValueError(f"site must be an integer in 0..{len(sites) - 1} or None, got {site!r}")
    elif not 0 <= int(site) < len(sites):
        raise ValueError(f"site must be in 0..{len(sites) - 1} or None, got {site}")
    base = sites[int(site)]
    jitter = rng.normal(0.0, 1.0, 7)
    look = replace(
        base,
        gain=tuple(float(g * np.exp(0.04 * j)) for g, j in zip(base.gain, jitter[:3])),
        gamma=float(base.gamma * np.exp(0.08 * jitter[3])),
        contrast=float(base.contrast * np.exp(0.08 * jitter[4])),
        brightness=float(base.brightness + 0.03 * jitter[5]),
        noise=float(base.noise * np.exp(0.2 * jitter[6])),
    )
    return int(site), look


def _tone_curve(look: SiteLook, levels: int, channels: int) -> np.ndarray:
    """Lookup table (channels * levels) from quantised linear intensity to uint8.

    Contrast about mid-grey, brightness, per-channel gain and gamma, plus a short toe that
    keeps 0 black (the fundus border stays black whatever the brightness offset).
    """
    x = np.linspace(0.0, 1.0, levels)
    gains = np.asarray(look.gain[:channels] if channels == 3 else [np.mean(look.gain)])
    curve = ((x - 0.5) * look.contrast + 0.5 + look.brightness)[None, :] * gains[:, None]
    curve = np.clip(curve, 0.0, 1.0) ** look.gamma * np.clip(x / 0.03, 0.0, 1.0)
    return np.round(255.0 * curve).astype(np.uint8).ravel()


def finish(
    image: np.ndarray,
    look: SiteLook,
    rng: np.random.Generator,
    support: np.ndarray | None = None,
) -> np.ndarray:
    """Apply a site's look to a float image in [0, 1] (HxW or HxWx3) and quantise to uint8.

    Sensor noise is added (one field shared by the colour channels, like luminance noise);
    ``support`` (float HxW in [0, 1], e.g. the fundus field of view) blacks out what the
    camera does not see; contrast, brightness, per-channel gain and gamma are applied by a
    lookup table at quantisation, far cheaper than per-pixel arithmetic. ``image`` is
    modified in place.
    """
    colour = image.ndim == 3
    levels = 4096
    noise = white_noise(rng, image.shape[0]) * np.float32(look.noise)
    image += noise[..., None] if colour else noise
    if support is not None:
        image *= support[..., None] if colour else support
    np.multiply(image, np.float32(levels - 1), out=image)
    np.clip(image, 0, levels - 1, out=image)
    index = image.astype(np.uint16)
    if colour:
        index += np.arange(3, dtype=np.uint16) * np.uint16(levels)
    return _tone_curve(look, levels, 3 if colour else 1)[index]
