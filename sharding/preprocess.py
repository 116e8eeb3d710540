"""Per-modality preprocessing, in the spirit of the LD paper's.

- every input is first brought to 8 bit (:func:`to_uint8`): DICOM rescale + VOI window
  (or a 0.5–99.5 percentile window when the file has none and is deeper than 8 bit),
  MONOCHROME1 inverted so that bone is bright;
- fundus (:func:`preprocess_fundus`): crop to the field of view — the largest bright
  connected region, plus a margin — pad to a square with black, resize to size × size;
- X-ray (:func:`preprocess_xray`): gray, resized to fit size × size keeping the aspect
  ratio, padded with black.

Each returns the processed PIL image and a dict of the parameters used (stored with the
sample so the transform can be reproduced or inverted).
"""

from __future__ import annotations

from collections import deque

import numpy as np
from PIL import Image

from .decode import Decoded, Quarantine


def to_uint8(dec: Decoded) -> tuple[np.ndarray, dict]:
    """Map decoded pixels to uint8 (gray or RGB) and say how."""
    arr = dec.pixels
    params: dict = {"bits_stored": dec.bits_stored, "photometric": dec.photometric}
    if dec.photometric == "RGB":
        if arr.dtype != np.uint8:
            arr = (arr.astype(np.float64) * 255.0 / float(2**dec.bits_stored - 1)).clip(0, 255)
            arr = np.rint(arr).astype(np.uint8)
        params["window"] = None
        return arr, params
    values = arr.astype(np.float64) * dec.rescale[0] + dec.rescale[1]
    if dec.window is not None:  # DICOM PS3.3 C.11.2.1.2 linear VOI function
        center, width = dec.window
        out = ((values - (center - 0.5)) / (width - 1) + 0.5) * 255.0
        params["window"], params["window_source"] = [center, width], "dicom"
    elif arr.dtype == np.uint8 and dec.rescale == (1.0, 0.0):
        out = values
        params["window"], params["window_source"] = None, "none"
    else:
        lo, hi = np.percentile(values, [0.5, 99.5])
        hi = hi if hi > lo else lo + 1.0
        out = (values - lo) * 255.0 / (hi - lo)
        params["window"], params["window_source"] = [float((lo + hi) / 2), float(hi - lo)], "percentile"
    out = np.rint(np.clip(out, 0, 255)).astype(np.uint8)
    params["inverted"] = dec.photometric == "MONOCHROME1"
    if params["inverted"]:
        out = 255 - out
    return out, params


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
    """The field of view at probe resolution (bool, at most ``probe`` px) and the threshold used:
    pixels brighter than ``max(12, 0.1 * p99)`` (brightest channel), largest connected region."""
    h, w = rgb.shape[:2]
    lum = rgb.max(axis=2) if rgb.ndim == 3 else rgb
    scale = max(h, w) / probe if max(h, w) > probe else 1.0
    small = np.asarray(Image.fromarray(lum).resize(
        (max(1, round(w / scale)), max(1, round(h / scale))), Image.BOX))
    threshold = max(12.0, 0.1 * float(np.percentile(small, 99)))
    region = _largest_component(small > threshold)
    if region.sum() < 0.01 * region.size:
        raise Quarantine("no_field_of_view", "no bright region covering 1% of the image")
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


def pad_to_square(img: Image.Image) -> tuple[Image.Image, list[int]]:
    """Centre ``img`` on a black square canvas; returns it and the [left, top] offset."""
    w, h = img.size
    side = max(w, h)
    if w == h:
        return img, [0, 0]
    canvas = Image.new(img.mode, (side, side), 0)
    offset = [(side - w) // 2, (side - h) // 2]
    canvas.paste(img, tuple(offset))
    return canvas, offset


def preprocess_fundus(dec: Decoded, size: int, margin: float = 0.02) -> tuple[Image.Image, dict]:
    """Crop to the field of view, pad square, resize to size × size RGB."""
    arr, params = to_uint8(dec)
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=2)
    box, threshold = field_of_view_box(arr, margin)
    img = Image.fromarray(arr, "RGB").crop(tuple(box))
    img, offset = pad_to_square(img)
    out = img.resize((size, size), Image.LANCZOS)
    params.update({"op": "fundus_fov_crop", "crop_box": box, "fov_threshold": threshold,
                   "margin": margin, "pad_offset": offset, "size": size})
    return out, params


def preprocess_xray(dec: Decoded, size: int) -> tuple[Image.Image, dict]:
    """Window to 8-bit gray, fit into size × size keeping aspect, pad with black."""
    arr, params = to_uint8(dec)
    img = Image.fromarray(arr, "RGB" if arr.ndim == 3 else "L").convert("L")
    w, h = img.size
    scale = size / max(w, h)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    resized = img.resize(new, Image.LANCZOS)
    canvas = Image.new("L", (size, size), 0)
    offset = [(size - new[0]) // 2, (size - new[1]) // 2]
    canvas.paste(resized, tuple(offset))
    params.update({"op": "xray_fit_pad", "scale": scale, "resized": list(new),
                   "pad_offset": offset, "size": size})
    return canvas, params


def preprocess(dec: Decoded, modality: str, size: int) -> tuple[Image.Image, dict]:
    if modality == "fundus":
        return preprocess_fundus(dec, size)
    if modality == "xray":
        return preprocess_xray(dec, size)
    raise ValueError(f"unknown modality {modality!r} (fundus or xray)")
