"""Low-level helpers shared by the fundus and chest X-ray generators.

Everything here is vectorised: numpy array arithmetic, or Pillow's C routines for
rasterising polygons/polylines and for Gaussian blurs. No per-pixel Python loops.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

MIN_SIZE = 32
MAX_SIZE = 8192


def check_size(size: object) -> int:
    """Return ``size`` as an int, or raise ValueError if it is not a usable image side."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise ValueError(f"size must be an integer number of pixels, got {size!r}")
    if not MIN_SIZE <= int(size) <= MAX_SIZE:
        raise ValueError(f"size must be between {MIN_SIZE} and {MAX_SIZE} pixels, got {size}")
    return int(size)


def check_seed(seed: object) -> int:
    """Return ``seed`` as an int, or raise ValueError if it is not a non-negative integer."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


@lru_cache(maxsize=8)
def pixel_axes(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Open coordinate grid of pixel centres: xs with shape (1, size), ys with shape (size, 1).

    Broadcasting the two gives full-image fields at the cost of one array operation.
    """
    coords = np.arange(size, dtype=np.float32) + 0.5
    xs, ys = coords[None, :], coords[:, None]
    xs.setflags(write=False)
    ys.setflags(write=False)
    return xs, ys


def squared_distance(size: int, center: np.ndarray) -> np.ndarray:
    """Squared distance of every pixel centre to ``center`` = (x, y)."""
    xs, ys = pixel_axes(size)
    return (xs - np.float32(center[0])) ** 2 + (ys - np.float32(center[1])) ** 2


def patch_axes(size: int, center, half: float) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
    """Pixel-centre axes of the square patch of half-side ``half`` around ``center``, clipped
    to the image, with the (rows, cols) slices that cut that patch out of a full image.

    Lets small round structures (optic disc, lesions) be computed on a patch, not the image.
    """
    xs, ys = pixel_axes(size)
    x0, x1 = (int(np.clip(np.floor(center[0] + d * half), 0, size)) for d in (-1, 1))
    y0, y1 = (int(np.clip(np.floor(center[1] + d * half), 0, size)) for d in (-1, 1))
    x1, y1 = max(x1 + 1, x0 + 1), max(y1 + 1, y0 + 1)
    window = (slice(y0, min(y1, size)), slice(x0, min(x1, size)))
    return window, xs[:, window[1]], ys[window[0], :]


def ellipse_radius(xs: np.ndarray, ys: np.ndarray, center, axes, angle: float) -> np.ndarray:
    """Normalised elliptical radius on the open grid (xs, ys): < 1 inside, 1 on the outline.

    ``axes`` are the semi-axes (a, b) along the ellipse's own x and y; ``angle`` (radians)
    rotates the ellipse from the image x axis towards the image y axis (y points down).
    """
    dx, dy = xs - np.float32(center[0]), ys - np.float32(center[1])
    c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    u = (dx * c + dy * s) / np.float32(axes[0])
    v = (dy * c - dx * s) / np.float32(axes[1])
    return np.sqrt(u * u + v * v)


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Band-limited noise field (about unit variance) with roughly ``cells`` blobs per side.

    A small white-noise grid is upsampled bicubically by Pillow, which is much cheaper than
    filtering a full-resolution field.
    """
    cells = max(1, int(cells))
    grid = rng.standard_normal((cells + 3, cells + 3)).astype(np.float32)
    image = Image.fromarray(grid).resize(
        (size, size), Image.Resampling.BICUBIC, box=(1.0, 1.0, cells + 2.0, cells + 2.0)
    )
    return np.asarray(image, dtype=np.float32)


def fractal_noise(rng: np.random.Generator, size: int, cells: int, octaves: int = 3) -> np.ndarray:
    """Sum of ``octaves`` smooth-noise fields, each twice as fine and half as strong."""
    total = np.zeros((size, size), np.float32)
    for octave in range(octaves):
        total += smooth_noise(rng, size, cells * 2**octave) * np.float32(0.5**octave)
    return total / np.float32(np.sqrt(sum(0.25**k for k in range(octaves))))


_NOISE_TABLE_SIDE = 2048


@lru_cache(maxsize=1)
def _noise_table() -> np.ndarray:
    """A fixed table of standard-normal noise, generated once per process."""
    table = np.random.default_rng(0x5EED).standard_normal(
        (_NOISE_TABLE_SIDE, _NOISE_TABLE_SIDE), dtype=np.float32
    )
    table.setflags(write=False)
    return table


def white_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size) standard-normal pixel noise, deterministic given ``rng``.

    Up to half the table side it is a random window of a fixed noise table (a copy-free
    view: drawing 262k normals per image would otherwise dominate the generator's time);
    larger images draw fresh noise.
    """
    if size > _NOISE_TABLE_SIDE // 2:
        return rng.standard_normal((size, size), dtype=np.float32)
    y0, x0 = rng.integers(0, _NOISE_TABLE_SIDE - size + 1, 2)
    return _noise_table()[y0 : y0 + size, x0 : x0 + size]


def new_layer(size: int) -> Image.Image:
    """Blank 8-bit layer to rasterise shapes into."""
    return Image.new("L", (size, size), 0)


def draw_polyline(layer: Image.Image, points: np.ndarray, width: float, value: int = 255) -> None:
    """Rasterise a polyline (n, 2) of (x, y) points with the given width into ``layer``.

    Thin lines go to Pillow's line routine; thick ones are drawn as one polygon, the ribbon
    offset by half the width along the local normals (Pillow's rounded joints cost a Python
    call per vertex, which dominated the generator's time).
    """
    if len(points) < 2:
        return
    draw = ImageDraw.Draw(layer)
    if width <= 2.5:
        draw.line(points.ravel().tolist(), fill=int(value), width=max(1, int(round(width))))
        return
    tangent = np.gradient(points, axis=0)
    tangent /= np.maximum(np.linalg.norm(tangent, axis=1, keepdims=True), 1e-9)
    offset = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1) * (width / 2.0)
    ribbon = np.vstack([points + offset, (points - offset)[::-1]])
    draw.polygon(ribbon.ravel().tolist(), fill=int(value))


def draw_polygon(layer: Image.Image, points: np.ndarray, value: int = 255) -> None:
    """Rasterise a filled closed polygon (n, 2) into ``layer``."""
    ImageDraw.Draw(layer).polygon(points.ravel().tolist(), fill=int(value))


def draw_disc(layer: Image.Image, center, radius: float, value: int = 255) -> None:
    """Rasterise a filled circle into ``layer``."""
    x, y = float(center[0]), float(center[1])
    r = max(0.5, float(radius))
    ImageDraw.Draw(layer).ellipse((x - r, y - r, x + r, y + r), fill=int(value))


def polygon_mask(size: int, points: np.ndarray) -> np.ndarray:
    """Boolean mask of a filled closed polygon."""
    layer = new_layer(size)
    draw_polygon(layer, points)
    return np.asarray(layer) > 0


def layer_mask(layer: Image.Image) -> np.ndarray:
    """Boolean mask of every pixel drawn into ``layer``."""
    return np.asarray(layer) > 0


def soften(layer: Image.Image, radius: float) -> np.ndarray:
    """Layer as float32 in [0, 1], blurred by about ``radius`` pixels (0 = no blur).

    Small radii (anti-aliasing, defocus of thin lines) use one box-blur pass, which costs a
    third of Pillow's Gaussian (three box passes); larger radii use the Gaussian.
    """
    if radius > 2.0:
        layer = layer.filter(ImageFilter.GaussianBlur(radius))
    elif radius > 0.05:
        layer = layer.filter(ImageFilter.BoxBlur(radius))
    return np.asarray(layer, dtype=np.float32) * np.float32(1.0 / 255.0)


def blurred_sum(size: int, parts, radius: float, full_scale: float) -> np.ndarray:
    """Blur of the weighted sum of ``parts`` [(mask or float field, weight), ...].

    The sum is quantised to 8 bits over [0, full_scale] and blurred once by Pillow, instead
    of blurring every part: one blur per image instead of a dozen. Later sensor noise hides
    the 8-bit steps.
    """
    total = np.zeros((size, size), np.float32)
    for field, weight in parts:
        total += field * np.float32(weight)
    total *= np.float32(255.0 / full_scale)
    np.clip(total, 0.0, 255.0, out=total)
    layer = Image.fromarray((total + np.float32(0.5)).astype(np.uint8))
    return soften(layer, radius) * np.float32(full_scale)


def soften_mask(mask: np.ndarray, radius: float) -> np.ndarray:
    """Boolean mask as a float32 [0, 1] field with edges blurred by ``radius`` pixels."""
    return soften(Image.fromarray(mask.astype(np.uint8) * np.uint8(255)), radius)


@dataclass(frozen=True)
class Similarity:
    """Map from a canonical anatomy frame to pixels: scale, rotate, optionally mirror, shift."""

    scale: float
    angle: float  # radians, counter-clockwise as seen on screen would be negative: y points down
    offset: tuple[float, float]
    mirror_x: bool = False

    @property
    def matrix(self) -> np.ndarray:
        c, s = np.cos(self.angle), np.sin(self.angle)
        flip = np.diag([-1.0 if self.mirror_x else 1.0, 1.0])
        return self.scale * np.array([[c, -s], [s, c]]) @ flip

    def points(self, pts) -> np.ndarray:
        """Map an (n, 2) array (or one (2,) point) of canonical points to pixel coordinates."""
        pts = np.asarray(pts, dtype=np.float64)
        return pts @ self.matrix.T + np.asarray(self.offset)

    def direction(self, angle: float) -> float:
        """Map a canonical direction angle (radians) to the pixel frame."""
        if self.mirror_x:
            angle = np.pi - angle
        return float(angle + self.angle)


def as_xy(point) -> tuple[float, float]:
    """A landmark as a plain (x, y) tuple of Python floats."""
    return (float(point[0]), float(point[1]))
