"""Decode one source file (PNG, JPEG, TIFF, DICOM) into pixels plus the few technical
attributes preprocessing needs — and nothing else from the source.

The format is decided by magic bytes, never by the file name. Every failure raises
:class:`Quarantine` with a stable reason code; callers count and report it. The image
size is checked against ``max_pixels`` *before* pixels are decoded (decompression bombs), and an
image much larger than the shards need is reduced while (JPEG) or right after (other formats) it is
decoded, so a worker's memory stays bounded by ``max_pixels`` × bytes per pixel (see
:func:`reduction_factor`).
For DICOM only the pixel module, windowing/rescale values and PatientID (to build the
keyed pseudonym, never stored) are read.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ldisc.preprocess import dicom_display

REASONS = (
    "unsafe_path", "unreadable_file", "empty_file", "not_an_image", "corrupt_image",
    "too_many_pixels", "unreadable_dicom", "unsupported_photometric", "unsupported_format",
    "no_field_of_view", "processing_error", "symlink_loop", "unreadable_folder",
)


class Quarantine(Exception):
    """A source file that must be skipped; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str = ""):
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass
class Decoded:
    """Decoded pixels: (H, W) gray or (H, W, 3) RGB, any integer depth, plus display info."""

    pixels: np.ndarray
    photometric: str            # MONOCHROME1, MONOCHROME2 or RGB
    bits_stored: int
    source_format: str          # png, jpeg, tiff, dicom
    window: tuple[float, float] | None = None   # DICOM VOI window (center, width)
    rescale: tuple[float, float] = (1.0, 0.0)   # DICOM modality LUT (slope, intercept)
    patient_id: str | None = None               # only used for the keyed pseudonym
    source_size: tuple[int, int] | None = None  # (W, H) in the file when ``pixels`` were reduced on decode

    @property
    def original_size(self) -> tuple[int, int]:
        return self.source_size or (int(self.pixels.shape[1]), int(self.pixels.shape[0]))

    def content_hash(self) -> str:
        """sha256 of the decoded pixels (dtype, shape and values): the sample id."""
        arr = np.ascontiguousarray(self.pixels)
        h = hashlib.sha256(f"{arr.dtype.str}|{arr.shape}|".encode())
        h.update(arr.tobytes())
        return h.hexdigest()


def sniff(head: bytes) -> str | None:
    """Source format from the first 132 bytes, or None if it is not a supported image.

    The DICOM marker comes first: a file with ``DICM`` at offset 128 is DICOM whatever its 128-byte
    preamble holds (some vendors write "dual-personality" files whose preamble is also a TIFF header)."""
    if head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    return None


def reduction_factor(width: int, height: int, work_side: int | None) -> int:
    """Integer factor k by which an image is reduced on decode: the largest k that keeps the shorter
    side ≥ ``work_side`` (1 when ``work_side`` is None or the image is not that large). Ingestion passes
    max(4 × the stored side, 2048), so images under 4096 px are decoded exactly as they are, and a 9999²
    photograph is reduced 4× before windowing and cropping make float copies of it."""
    if not work_side:
        return 1
    return max(1, min(width, height) // int(work_side))


def decode_file(path: Path, max_pixels: int, work_side: int | None = None) -> Decoded:
    """Decode ``path`` or raise :class:`Quarantine`; PIL formats larger than ``work_side`` on their
    shorter side come back reduced (:func:`reduction_factor`) with ``source_size`` set."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError as e:
        raise Quarantine("unreadable_file", type(e).__name__) from None
    if not head:
        raise Quarantine("empty_file")
    fmt = sniff(head)
    if fmt is None:
        raise Quarantine("not_an_image", "unrecognised file signature")
    return _decode_dicom(path, max_pixels) if fmt == "dicom" else _decode_pil(path, fmt, max_pixels, work_side)


_PIL_MODES = {"L": "MONOCHROME2", "LA": "MONOCHROME2", "1": "MONOCHROME2", "RGB": "RGB",
              "RGBA": "RGB", "P": "RGB", "I;16": "MONOCHROME2", "I;16B": "MONOCHROME2",
              "I;16L": "MONOCHROME2", "I": "MONOCHROME2"}


def _block_mean(arr: np.ndarray, k: int) -> np.ndarray:
    """Mean of k×k blocks (the remainder rows/columns dropped), in ``arr``'s integer dtype."""
    if k <= 1:
        return arr
    h, w = arr.shape[0] // k * k, arr.shape[1] // k * k
    blocks = arr[:h, :w].reshape(h // k, k, w // k, k, *arr.shape[2:])
    return np.rint(blocks.mean(axis=(1, 3))).astype(arr.dtype)


def _decode_pil(path: Path, fmt: str, max_pixels: int, work_side: int | None = None) -> Decoded:
    Image.MAX_IMAGE_PIXELS = None  # our own limit below replaces PIL's warning/error
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise Quarantine("too_many_pixels", f"{w}x{h} > {max_pixels}")
            if im.mode not in _PIL_MODES:
                raise Quarantine("unsupported_photometric", f"image mode {im.mode}")
            k = reduction_factor(w, h, work_side)
            if k > 1 and fmt == "jpeg":
                im.draft(im.mode, (w // k, h // k))      # the JPEG decoder scales by 1/2, 1/4, 1/8 itself
            im.load()
            mode = im.mode
            if mode in ("1", "LA"):
                im2, bits = im.convert("L"), 8
            elif mode in ("RGBA", "P"):
                im2, bits = im.convert("RGB"), 8
            elif mode.startswith("I"):
                im2, bits = im, 16
            else:
                im2, bits = im, 8
            k = reduction_factor(*im2.size, work_side)     # what the JPEG draft left to reduce
            if k > 1 and im2.mode in ("L", "RGB"):
                im2, k = im2.reduce(k), 1
            arr = _block_mean(np.array(im2), k)
    except Quarantine:
        raise
    except Exception as e:  # truncated data, bad CRC, broken headers, ...
        raise Quarantine("corrupt_image", f"{type(e).__name__}: {e}"[:200]) from None
    if arr.ndim not in (2, 3) or arr.size == 0:
        raise Quarantine("corrupt_image", f"unexpected pixel shape {arr.shape}")
    if mode == "I":  # 32-bit container: keep the 16-bit range only if values fit
        if arr.min() < 0 or arr.max() > 65535:
            raise Quarantine("unsupported_format", "32-bit integer pixels")
        arr = arr.astype(np.uint16)
    reduced = (arr.shape[1], arr.shape[0]) != (w, h)
    return Decoded(arr, _PIL_MODES[mode], bits, fmt, source_size=(w, h) if reduced else None)


def _decode_dicom(path: Path, max_pixels: int) -> Decoded:
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ModuleNotFoundError:
        raise Quarantine("unsupported_format", "DICOM needs pydicom: pip install 'ldisc[dicom]'") from None

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path)
    except (InvalidDicomError, Exception) as e:
        raise Quarantine("unreadable_dicom", type(e).__name__) from None
    if "PixelData" not in ds:
        raise Quarantine("unreadable_dicom", "no pixel data")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if rows * cols * frames > max_pixels:
        raise Quarantine("too_many_pixels", f"{cols}x{rows}x{frames} > {max_pixels}")
    if frames != 1:
        raise Quarantine("unsupported_format", f"{frames} frames")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric not in ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422"):
        raise Quarantine("unsupported_photometric", photometric or "missing")
    bits = int(ds.get("BitsStored", 0) or 0)
    if not 1 <= bits <= 16:
        raise Quarantine("unsupported_format", f"BitsStored={bits}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = ds.pixel_array  # YBR is converted to RGB by pydicom
    except Exception as e:
        raise Quarantine("unreadable_dicom", f"pixel data: {type(e).__name__}") from None
    if arr.shape[:2] != (rows, cols):
        raise Quarantine("unreadable_dicom", f"pixel shape {arr.shape} != {rows}x{cols}")
    window, rescale = dicom_display(ds)
    out_photo = "RGB" if photometric.startswith(("RGB", "YBR")) else photometric
    if out_photo != "RGB" and ("ModalityLUTSequence" in ds or "VOILUTSequence" in ds):
        arr, window, rescale = _apply_lut_sequences(arr, ds, window)
    pid = str(ds.get("PatientID", "") or "").strip() or None
    return Decoded(arr, out_photo, bits, "dicom", window, rescale, pid)


def _apply_lut_sequences(arr: np.ndarray, ds, window):
    """Modality LUT Sequence and VOI LUT Sequence through pydicom (PS3.3 C.11.1, C.11.2).

    → (pixels, window, rescale) for :func:`sharding.preprocess.to_uint8`: after a VOI LUT Sequence the
    pixels are already windowed to 8 bit (window None, no rescale); after a Modality LUT Sequence alone
    they are modality values, still to be windowed by the file's window or, failing that, by the
    documented percentile fallback."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    values = apply_modality_lut(arr, ds)
    if "VOILUTSequence" not in ds:
        return values, window, (1.0, 0.0)
    try:
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        out = apply_voi_lut(values, ds, index=0, prefer_lut=True).astype(np.float64)
    except Exception as e:  # a malformed LUT: quarantine rather than guess a window
        raise Quarantine("unreadable_dicom", f"VOI LUT: {type(e).__name__}") from None
    out8 = np.rint(np.clip(out * 255.0 / float(2**bits - 1), 0, 255)).astype(np.uint8)
    return out8, None, (1.0, 0.0)
