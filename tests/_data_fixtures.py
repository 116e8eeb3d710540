"""Test helpers for ingestion and loader tests: image writers, a planted-PHI DICOM, a
corrupt corpus, the CLI as a real subprocess, and a local S3 server (moto)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from ldisc.train.env import free_port  # noqa: F401  (re-exported for the tests)

REPO = Path(__file__).resolve().parents[1]
# real photographs and DICOMs: ../shared/realdata beside the checkout, or $LDISC_REALDATA (a worktree elsewhere)
REALDATA = Path(os.environ.get("LDISC_REALDATA") or Path(__file__).resolve().parents[2] / "shared" / "realdata")
PYTHON = sys.executable
SECRET = "test-secret-0123456789abcdef"
N_FIRST = 45                 # images of the shared streaming dataset (conftest fixture ``dataset``)

PHI = {
    "PatientName": "Qwertyson^Zyxabel^PHI",
    "PatientID": "PID-93127-XYZ",
    "PatientBirthDate": "19450203",
    "AccessionNumber": "ACC55501X",
    "InstitutionName": "Saint Phigenia Hospital",
    "ReferringPhysicianName": "Refdoc^Phileas",
    "StudyDate": "20011231",
    "StudyID": "STUDYPHI77",
    "OtherPatientIDs": "OTHERPID-4242",
    "PatientAddress": "12 Phistreet Privacyville",
}


def cli_env(**extra: str) -> dict:
    env = dict(os.environ, LDISC_PATIENT_KEY_SECRET=SECRET, PYTHONPATH=str(REPO))
    env.update(extra)
    return env


def run_cli(*args: str, env: dict | None = None, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess:
    """``ldisc-shard ARGS`` as a real subprocess (python -m sharding.cli)."""
    proc = subprocess.run([PYTHON, "-m", "sharding.cli", *args], env=env or cli_env(), cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"ldisc-shard {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def gray_image(seed: int, size: tuple[int, int] = (80, 64)) -> np.ndarray:
    """A random-ish 8-bit gray image with structure (so PNGs differ per seed)."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = 128 + 60 * np.sin(xx / (3 + seed % 7)) * np.cos(yy / 5)
    return np.clip(base + rng.normal(0, 20, (h, w)), 0, 255).astype(np.uint8)


def write_image(path: Path, arr: np.ndarray, fmt: str | None = None, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode).save(path, fmt)
    return path


def fundus_image(size: tuple[int, int], center: tuple[int, int], radius: int, seed: int = 0) -> np.ndarray:
    """A synthetic fundus: textured orange disc on black, at a known place."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    inside = (xx - center[0]) ** 2 + (yy - center[1]) ** 2 <= radius**2
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.uint8)
    img[inside] = np.clip(np.array([200, 90, 40]) + rng.normal(0, 15, (inside.sum(), 3)), 30, 255)
    return img


def write_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME1", bits: int = 12,
                phi: dict | None = None, window: tuple[float, float] | None = (2048, 4096)) -> Path:
    """An uncompressed DICOM CR image carrying ``phi`` attributes."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    for key, value in (phi or {}).items():
        setattr(ds, key, value)
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 3 if pixels.ndim == 3 else 1
    ds.PhotometricInterpretation = photometric
    if pixels.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = 16 if bits > 8 else 8
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, 0
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = pixels.astype(np.uint16 if bits > 8 else np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def make_corrupt_corpus(root: Path, outside: Path) -> tuple[dict[str, str], list[str]]:
    """Bad files (rel path → expected reason) and good files (rel paths) under ``root``."""
    bad: dict[str, str] = {}
    good: list[str] = []
    for i, fmt, ext in ((1, "PNG", "png"), (2, "JPEG", "jpg"), (3, "TIFF", "tif")):
        write_image(root / f"good/g{i}.{ext}", gray_image(i), fmt)
        good.append(f"good/g{i}.{ext}")
    write_image(root / "good/g16.tif", gray_image(4).astype(np.uint16) * 200, "TIFF")
    good.append("good/g16.tif")
    write_dicom(root / "good/g5.dcm", gray_image(5).astype(np.uint16) * 16)
    good.append("good/g5.dcm")
    whole = png_bytes(gray_image(10))
    (root / "bad").mkdir(parents=True, exist_ok=True)
    (root / "bad/truncated.png").write_bytes(whole[: len(whole) // 2]); bad["bad/truncated.png"] = "corrupt_image"
    jpg = io.BytesIO(); Image.fromarray(gray_image(11)).save(jpg, "JPEG")
    (root / "bad/truncated.jpg").write_bytes(jpg.getvalue()[:300]); bad["bad/truncated.jpg"] = "corrupt_image"
    (root / "bad/garbage.png").write_bytes(np.random.default_rng(0).bytes(500)); bad["bad/garbage.png"] = "not_an_image"
    (root / "bad/notes.txt").write_text("not an image\n"); bad["bad/notes.txt"] = "not_an_image"
    (root / "bad/empty.png").write_bytes(b""); bad["bad/empty.png"] = "empty_file"
    write_image(root / "bad/bomb.png", np.zeros((1200, 1000), np.uint8)); bad["bad/bomb.png"] = "too_many_pixels"
    (root / "bad/broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff" + b"junk" * 5)
    bad["bad/broken.dcm"] = "unreadable_dicom"
    write_dicom(root / "bad/palette.dcm", gray_image(12), "PALETTE COLOR", bits=8, window=None)
    bad["bad/palette.dcm"] = "unsupported_photometric"
    cmyk = Image.fromarray(np.stack([gray_image(13)] * 3, 2)).convert("CMYK")
    cmyk.save(root / "bad/cmyk.jpg", "JPEG"); bad["bad/cmyk.jpg"] = "unsupported_photometric"
    write_image(outside / "secret.png", gray_image(14))
    os.symlink((outside / "secret.png").resolve(), root / "bad/escape.png"); bad["bad/escape.png"] = "unsafe_path"
    return bad, good



def read_dataset_bytes(root: Path) -> bytes:
    """All bytes of all files under a local dataset (for PHI scans)."""
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


def ingest_gray(root: Path, n: int, shard_samples: int, dataset: str | None = None, size: int = 32) -> str:
    """``n`` small gray X-ray-like images under ``root/src`` ingested into ``dataset`` (default
    ``root/ds``; an ``s3://`` URL works with a local S3 server running) in shards of ``shard_samples``."""
    from sharding.ingest import IngestOptions, ingest

    for i in range(n):
        write_image(root / "src" / f"x{i:03d}.png", gray_image(i, (40, 32)))
    dataset = dataset or str(root / "ds")
    ingest(IngestOptions(source=str(root / "src"), dataset=dataset, site="s", modality="xray", stored_side=size,
                         shard_samples=shard_samples, progress=False, quarantine_report=str(root / "q.jsonl")),
           SECRET.encode())
    return dataset
def add_images(dataset, src: Path, seeds, site: str = "s", modality: str = "xray"):
    """Write gray PNGs ``seeds`` under ``src`` and ingest them into ``dataset`` (32 px, 4 per shard)."""
    from sharding.ingest import IngestOptions, ingest

    for i in seeds:
        write_image(src / f"{site}{i:03d}.png", gray_image(i, (40, 32)))
    opts = IngestOptions(source=str(src), dataset=str(dataset), site=site, modality=modality, stored_side=32,
                         shard_samples=4, progress=False, quarantine_report=str(src.parent / f"q-{site}.jsonl"))
    return ingest(opts, SECRET.encode())
