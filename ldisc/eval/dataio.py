"""Reading images and masks in the formats the public datasets ship, and turning them into tensors.

Formats covered: PNG / JPEG / TIFF / GIF / PPM (optionally ``.gz``-compressed, as STARE ships),
JSRT's headerless 12-bit ``.IMG`` rasters, DICOM (SIIM-ACR), and the run-length encodings of SIIM-ACR
(the original "relative" encoding of ``train-rle.csv`` and the standard absolute one of
``stage_2_train.csv``).
"""
from __future__ import annotations

import gzip
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ldisc.preprocess import crop_to_field_of_view, dicom_display, pad_to_square, window_to_uint8
from ldisc.views import pil_to_tensor

JSRT_SIDE = 2048


@dataclass(frozen=True)
class Item:
    """One labelled image of a dataset, loaded on demand: ``load() -> (image uint8, mask bool)``."""

    name: str
    load: Callable[[], tuple[np.ndarray, np.ndarray]]


def open_image(path: str | Path) -> Image.Image:
    """Open an image with PIL, transparently decompressing ``.gz`` files."""
    path = Path(path)
    if path.suffix.lower() == ".gz":
        with gzip.open(path, "rb") as f:
            img = Image.open(io.BytesIO(f.read()))
    else:
        img = Image.open(path)
    img.load()
    return img


def read_rgb(path: str | Path) -> np.ndarray:
    """Any image file → uint8 (H, W, 3)."""
    return np.asarray(open_image(path).convert("RGB"))


def read_mask(path: str | Path, level: float = 0) -> np.ndarray:
    """A mask image → bool (H, W): foreground where any channel exceeds ``level`` (0–255 scale).

    Handles palette GIFs (DRIVE, SCR), RGB masks drawn in red (IDRiD), grey-level soft maps (Drishti-GS1,
    use ``level=127`` for a 0.5 agreement threshold), 1-bit and 16-bit TIFFs.
    """
    img = open_image(path)
    if img.mode in ("P", "PA", "LA", "RGBA", "CMYK", "YCbCr"):
        img = img.convert("RGB")
    arr = np.asarray(img)
    if img.mode == "1":
        return arr.astype(bool)
    if img.mode.startswith("I") or img.mode == "F":
        peak = float(arr.max()) if arr.size else 1.0
        return arr.astype(np.float64) * (255.0 / max(peak, 1.0)) > level
    return (arr.max(-1) if arr.ndim == 3 else arr) > level


def rle_decode(rle: str, height: int, width: int, relative: bool) -> np.ndarray:
    """SIIM-ACR run-length encoding → bool (height, width). ``"-1"`` or empty → empty mask.

    Pixels are numbered column by column (the encodings were written from transposed arrays).
    ``relative=True``: the original ``train-rle.csv`` — each start is an offset from the end of the
    previous run, 0-based. ``relative=False``: the standard Kaggle encoding of ``stage_2_train.csv`` —
    absolute 1-based starts.
    """
    flat = np.zeros(height * width, dtype=bool)
    text = str(rle).strip()
    if text in ("", "-1", "nan"):
        return flat.reshape(width, height).T
    values = np.asarray(text.split(), dtype=np.int64)
    if values.size % 2:
        raise ValueError(f"run-length encoding has an odd number of values ({values.size})")
    starts, lengths = values[0::2], values[1::2]
    if relative:
        ends_before = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        starts = np.cumsum(starts) + ends_before
    else:
        starts = starts - 1
    if (starts < 0).any() or (starts + lengths > flat.size).any():
        raise ValueError("run-length encoding runs outside the image")
    for s, n in zip(starts, lengths):
        flat[s:s + n] = True
    return flat.reshape(width, height).T


def read_jsrt(path: str | Path, side: int = JSRT_SIDE, invert: bool = True) -> np.ndarray:
    """A JSRT ``.IMG`` file (headerless big-endian 16-bit, 12 bits used, ``side``²) → uint8 (H, W).

    JSRT stores dense tissue as low values; ``invert=True`` shows it bright, as radiographs are read.
    """
    raw = np.fromfile(path, dtype=">u2")
    if raw.size != side * side:
        raise ValueError(f"{path}: {raw.size} pixels, expected a {side}x{side} JSRT raster")
    img = np.clip(raw.reshape(side, side).astype(np.float32), 0, 4095) / 4095.0
    if invert:
        img = 1.0 - img
    return (img * 255 + 0.5).astype(np.uint8)


def read_dicom(path: str | Path) -> np.ndarray:
    """A DICOM radiograph → uint8 (H, W), windowed as ingestion windows (:func:`ldisc.preprocess.window_to_uint8`)."""
    import pydicom

    ds = pydicom.dcmread(str(path))
    window, rescale = dicom_display(ds)
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    bits = int(getattr(ds, "BitsStored", 8) or 8)
    arr, _ = window_to_uint8(ds.pixel_array, photometric, bits, window, rescale)
    return arr


def to_tensors(image: np.ndarray, mask: np.ndarray, size: int, fov_crop: bool = False,
               mask_threshold: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """(image uint8 HxW[x3], mask bool HxW) → image (3, size, size) in [0, 1], mask (1, size, size) in {0, 1}.

    ``fov_crop``: a fundus image and its mask are first cropped to the field-of-view box (the same
    function ingestion crops with). Both are then padded to a square (:func:`ldisc.preprocess.pad_to_square`).
    The mask is resampled by area averaging and binarised at ``mask_threshold`` (0.5: thin vessels keep
    their width on average; the authors binarise their resized masks at 0.3).
    """
    if image.shape[:2] != mask.shape[:2]:
        raise ValueError(f"image {image.shape[:2]} and mask {mask.shape[:2]} differ in size")
    mask = mask.astype(bool)
    if fov_crop:
        rgb = image if image.ndim == 3 else np.stack([image] * 3, axis=2)
        (image, mask), _ = crop_to_field_of_view(rgb, mask)
    image, mask = pad_to_square(image)[0], pad_to_square(mask)[0]
    pil = Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR)
    x = pil_to_tensor(pil)
    m = torch.from_numpy(mask.astype(np.float32))[None, None]
    if m.shape[-1] != size:
        mode = "area" if m.shape[-1] > size else "bilinear"
        m = F.interpolate(m, size=(size, size), mode=mode, **({} if mode == "area" else {"align_corners": False}))
    return x, (m[0] >= mask_threshold).float()
