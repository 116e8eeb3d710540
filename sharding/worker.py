"""The per-file work of an ingest, run in a process pool: decode → de-identify → preprocess
→ encode PNG + JSON. Returns plain tuples (picklable, nothing of the source but pixels)."""

from __future__ import annotations

import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .decode import Quarantine, decode_file
from .deid import patient_identifier, patient_key, sample_record
from .discover import SourceFile
from .preprocess import preprocess

# decode reduces images whose shorter side is ≥ 2 × max(this × the stored side, MIN_WORK_SIDE)
# (sharding.decode.reduction_factor): everything up to 4096 px is decoded as it is
WORK_SIDE_PER_STORED_SIDE = 4
MIN_WORK_SIDE = 2048


def work_side(stored_side: int) -> int:
    return max(WORK_SIDE_PER_STORED_SIDE * stored_side, MIN_WORK_SIDE)


@dataclass(frozen=True)
class WorkerOptions:
    """Everything a worker needs besides the file (the secret travels via the initializer)."""

    site: str
    modality: str
    size: int
    max_pixels: int
    non_dicom_patient: str = "file"
    png_compress_level: int = 3


@dataclass
class Processed:
    """A good input, ready to be packed into a shard."""

    rel: str
    sample_id: str
    png: bytes
    json: bytes
    patient_key: str
    source_format: str
    width: int
    height: int
    source_bytes: int
    seconds: float


@dataclass
class Rejected:
    """A quarantined input."""

    rel: str
    reason: str
    detail: str
    source_bytes: int
    seconds: float


_SECRET: bytes | None = None
_OPTIONS: WorkerOptions | None = None


def init_worker(secret: bytes, options: WorkerOptions) -> None:
    """Pool initializer: keep the secret and options in the worker process only."""
    global _SECRET, _OPTIONS
    _SECRET, _OPTIONS = secret, options


def process(src: SourceFile) -> Processed | Rejected:
    """Turn one source file into a shard sample, or say why it is quarantined."""
    assert _SECRET is not None and _OPTIONS is not None, "init_worker was not called"
    opt, t0 = _OPTIONS, time.perf_counter()
    nbytes = 0
    try:
        if src.problem:
            raise Quarantine(src.problem)
        try:
            nbytes = os.path.getsize(src.path)
        except OSError as e:
            raise Quarantine("unreadable_file", type(e).__name__) from None
        dec = decode_file(Path(src.path), opt.max_pixels, work_side=work_side(opt.size))
        image, params = preprocess(dec, opt.modality, opt.size)
        sample_id = dec.content_hash()
        key = patient_key(_SECRET, opt.site, patient_identifier(dec.patient_id, src.rel, opt.non_dicom_patient))
        record = sample_record(sample_id=sample_id, site=opt.site, modality=opt.modality,
                               source_format=dec.source_format, original_size=dec.original_size,
                               patient_key=key, preprocess=params)
        buf = io.BytesIO()
        image.save(buf, "PNG", compress_level=opt.png_compress_level)
        w, h = dec.original_size
        return Processed(src.rel, sample_id, buf.getvalue(), json.dumps(record, sort_keys=True).encode(),
                         key, dec.source_format, w, h, nbytes, time.perf_counter() - t0)
    except Quarantine as q:
        return Rejected(src.rel, q.reason, q.detail, nbytes, time.perf_counter() - t0)
    except Exception as e:  # an unforeseen failure on one file must not stop the run
        return Rejected(src.rel, "processing_error", f"{type(e).__name__}: {e}"[:200], nbytes,
                        time.perf_counter() - t0)
