"""Per-modality preprocessing of ingestion, in the spirit of the LD paper's. The shared steps
(windowing, field-of-view box, square padding) live in :mod:`ldisc.preprocess`, which the
downstream evaluation uses too.

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

import numpy as np
from PIL import Image

from ldisc.preprocess import NoFieldOfView, field_of_view_box, pad_to_square, window_to_uint8

from .decode import Decoded, Quarantine


def to_uint8(dec: Decoded) -> tuple[np.ndarray, dict]:
    """Map decoded pixels to uint8 (gray or RGB) and say how (see :func:`ldisc.preprocess.window_to_uint8`)."""
    return window_to_uint8(dec.pixels, dec.photometric, dec.bits_stored, dec.window, dec.rescale)


def preprocess_fundus(dec: Decoded, size: int, margin: float = 0.02) -> tuple[Image.Image, dict]:
    """Crop to the field of view, pad square, resize to size × size RGB."""
    arr, params = to_uint8(dec)
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=2)
    try:
        box, threshold = field_of_view_box(arr, margin)
    except NoFieldOfView as err:
        raise Quarantine("no_field_of_view", str(err)) from None
    x0, y0, x1, y1 = box
    square, offset = pad_to_square(arr[y0:y1, x0:x1])
    out = Image.fromarray(square, "RGB").resize((size, size), Image.LANCZOS)
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
