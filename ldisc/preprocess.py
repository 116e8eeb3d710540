"""Image preparation shared by ingestion (``sharding/``) and downstream evaluation (``ldisc/eval/``).

One owner for the steps both sides apply, so that pretraining and evaluation see images prepared
the same way:

- :func:`window_to_uint8` — pixel values to 8 bit: DICOM modality rescale and VOI window (PS3.3
  C.11.2.1.2), a 0.5–99.5 percentile window for deep images without one, MONOCHROME1 inverted;
- :func:`dicom_display` — the rescale and window attributes of a pydicom dataset;
- :func:`field_of_view_box` / :func:`crop_to_field_of_view` — the fundus field of view: the largest
  bright connected region of the image, plus a margin;
- :func:`pad_to_square` — centre an image (or mask) on a black square;
- :func:`network_input` — a [0, 1] image batch to what an encoder takes: ImageNet-normalised RGB for
  a 3-channel first convolution, gray as (x − 0.5)/0.5 for a 1-channel one (the authors' X-ray input).

``ldisc`` never imports ``sharding``; ``sharding.preprocess`` imports this module.
"""
from __future__ import annotations

from collections import deque

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # torch is imported by the callers that need it; ingestion workers never do
    import torch



class NoFieldOfView(ValueError):
    """A fundus image without a bright region covering 1% of it."""


def window_to_uint8(pixels: np.ndarray, photometric: str, bits_stored: int,
                    window: tuple[float, float] | None = None,
                    rescale: tuple[float, float] = (1.0, 0.0)) -> tuple[np.ndarray, dict]:
    """Map decoded pixels (gray or RGB, any integer depth) to uint8 and say how."""
    arr = pixels
    params: dict = {"bits_stored": bits_stored, "photometric": photometric}
    if photometric == "RGB":
        if arr.dtype != np.uint8:
            arr = (arr.astype(np.float64) * 255.0 / float(2**bits_stored - 1)).clip(0, 255)
            arr = np.rint(arr).astype(np.uint8)
        params["window"] = None
        return arr, params
    values = arr.astype(np.float64) * rescale[0] + rescale[1]
    if window is not None:  # DICOM PS3.3 C.11.2.1.2 linear VOI function
        center, width = window
        out = ((values - (center - 0.5)) / (width - 1) + 0.5) * 255.0
        params["window"], params["window_source"] = [center, width], "dicom"
    elif arr.dtype == np.uint8 and tuple(rescale) == (1.0, 0.0):
        out = values
        params["window"], params["window_source"] = None, "none"
    else:
        lo, hi = np.percentile(values, [0.5, 99.5])
        hi = hi if hi > lo else lo + 1.0
        out = (values - lo) * 255.0 / (hi - lo)
        params["window"], params["window_source"] = [float((lo + hi) / 2), float(hi - lo)], "percentile"
    out = np.rint(np.clip(out, 0, 255)).astype(np.uint8)
    params["inverted"] = photometric == "MONOCHROME1"
    if params["inverted"]:
        out = 255 - out
    return out, params


def dicom_display(ds) -> tuple[tuple[float, float] | None, tuple[float, float]]:
    """The VOI window (center, width; None when absent or degenerate) and modality rescale of a pydicom dataset."""
    window = None
    if "WindowCenter" in ds and "WindowWidth" in ds:
        center, width = ds.WindowCenter, ds.WindowWidth
        center = float(center[0] if _is_multi(center) else center)
        width = float(width[0] if _is_multi(width) else width)
        window = (center, width) if width > 1 else None
    rescale = (float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0))
    return window, rescale


def _is_multi(value) -> bool:
    return not isinstance(value, (str, bytes)) and hasattr(value, "__len__")


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """Boolean mask of the largest 4-connected True region (BFS on a small mask)."""
    h, w = mask.shape
    labels = np.zeros(mask.shape, np.int32)
    best_label, best_size, current = 0, 0, 0
    flat = mask.ravel()
    lab = labels.ravel()
    for start in np.flatnonzero(flat):
        if lab[start]:
            continue
        current += 1
        lab[start] = current
        queue, size = deque([start]), 0
        while queue:
            p = queue.popleft()
            size += 1
            y, x = divmod(p, w)
            for q, ok in ((p - w, y > 0), (p + w, y < h - 1), (p - 1, x > 0), (p + 1, x < w - 1)):
                if ok and flat[q] and not lab[q]:
                    lab[q] = current
                    queue.append(q)
        if size > best_size:
            best_label, best_size = current, size
    return labels == best_label if best_label else np.zeros_like(mask)


def _field_of_view_probe(rgb: np.ndarray, probe: int = 128) -> tuple[np.ndarray, float]:
    """The field of view at probe resolution (bool, at most ``probe`` px): pixels brighter than
    ``max(12, 0.1 * p99)`` (brightest channel), largest connected region. Raises
    :class:`NoFieldOfView` when that region covers less than 1% of the image."""
    h, w = rgb.shape[:2]
    lum = rgb.max(axis=2) if rgb.ndim == 3 else rgb
    scale = max(h, w) / probe if max(h, w) > probe else 1.0
    small = np.asarray(Image.fromarray(lum).resize(
        (max(1, round(w / scale)), max(1, round(h / scale))), Image.BOX))
    threshold = max(12.0, 0.1 * float(np.percentile(small, 99)))
    region = _largest_component(small > threshold)
    if region.sum() < 0.01 * region.size:
        raise NoFieldOfView("no bright region covering 1% of the image")
    return region, threshold


def field_of_view_mask(rgb: np.ndarray, probe: int = 256) -> np.ndarray:
    """Bool H×W mask of the fundus field of view (the rule of :func:`field_of_view_box`, upsampled)."""
    region, _ = _field_of_view_probe(rgb, probe)
    h, w = rgb.shape[:2]
    return np.asarray(Image.fromarray(region.astype(np.uint8) * 255).resize((w, h), Image.BILINEAR)) >= 128


def field_of_view_box(rgb: np.ndarray, margin: float = 0.02, probe: int = 128) -> tuple[list[int], float]:
    """Bounding box [x0, y0, x1, y1] of the fundus field of view, and the threshold used.

    The image is box-downsampled to at most ``probe`` px; pixels brighter than
    ``max(12, 0.1 * p99)`` (brightest channel) form the mask; the largest connected region
    is the field of view; its box is scaled back and grown by ``margin`` × image size.
    Raises :class:`NoFieldOfView` when that region covers less than 1% of the image.
    """
    h, w = rgb.shape[:2]
    region, threshold = _field_of_view_probe(rgb, probe)
    ys, xs = np.nonzero(region)
    sy, sx = h / region.shape[0], w / region.shape[1]
    pad = margin * max(h, w)
    x0 = max(0, int(np.floor(xs.min() * sx - pad)))
    y0 = max(0, int(np.floor(ys.min() * sy - pad)))
    x1 = min(w, int(np.ceil((xs.max() + 1) * sx + pad)))
    y1 = min(h, int(np.ceil((ys.max() + 1) * sy + pad)))
    return [x0, y0, x1, y1], threshold


def crop_to_field_of_view(rgb: np.ndarray, *masks: np.ndarray, margin: float = 0.02) -> tuple[list[np.ndarray], list[int]]:
    """Crop an RGB fundus image (and masks of the same size) to its field-of-view box; returns them and the box."""
    box, _ = field_of_view_box(rgb, margin)
    x0, y0, x1, y1 = box
    return [a[y0:y1, x0:x1] for a in (rgb, *masks)], box


def pad_to_square(arr: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Centre an (H, W[, C]) array on a zero (black) square; returns it and the [left, top] offset."""
    h, w = arr.shape[:2]
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    if h == w:
        return arr, [0, 0]
    pad = [(top, side - h - top), (left, side - w - left)] + [(0, 0)] * (arr.ndim - 2)
    return np.pad(arr, pad), [left, top]


def network_input(x: torch.Tensor, in_channels: int) -> torch.Tensor:
    """(B, 3, H, W) images in [0, 1] → the encoder's input, by the contract of
    :data:`ldisc.views.INPUT_NORMALIZATION` (the one owner, shared with pretraining): 3 channels are
    ImageNet-normalised (the authors' fundus input), 1 channel is the gray level as (x − 0.5)/0.5
    (the authors' X-ray input)."""
    from ldisc.views import modality_of_channels, normalize, to_channels

    return normalize(to_channels(x, in_channels), modality_of_channels(in_channels))
