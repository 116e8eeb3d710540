"""Ingest throughput (images/s, MB/s) of 512-px PNG sources, against the I/O-bound rate of
merely reading the same files and writing their bytes into a plain tar, in the same run.

Usage: python bench/ingest.py [--images 64] [--workers 2] [--modality xray]
Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_sources(root: Path, n: int, modality: str, size: int = 512) -> int:
    """``n`` distinct 512-px PNGs with image-like content; returns total bytes."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    total = 0
    for i in range(n):
        base = 110 + 70 * np.sin(xx / (9 + i % 13)) * np.cos(yy / (7 + i % 5))
        img = np.clip(base + rng.normal(0, 12, (size, size)), 0, 255).astype(np.uint8)
        if modality == "fundus":
            disc = (xx - size / 2) ** 2 + (yy - size / 2) ** 2 < (0.45 * size) ** 2
            img = np.stack([img, img * 0.5, img * 0.2], 2).astype(np.uint8) * disc[..., None]
        path = root / f"img{i:05d}.png"
        Image.fromarray(img).save(path)
        total += path.stat().st_size
    return total


def plain_tar_rate(src: Path, dst: Path) -> float:
    """Seconds to read every source file and write its bytes into one tar (fsync'd)."""
    t0 = time.perf_counter()
    with open(dst, "wb") as raw, tarfile.open(fileobj=raw, mode="w") as tar:
        for path in sorted(src.iterdir()):
            tar.add(path, arcname=path.name)
        raw.flush()
        os.fsync(raw.fileno())
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--modality", default="xray", choices=["xray", "fundus"])
    args = ap.parse_args()
    from sharding.ingest import IngestOptions, ingest

    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        tmp = Path(tmp)
        (tmp / "src").mkdir()
        nbytes = make_sources(tmp / "src", args.images, args.modality)
        tar_seconds = plain_tar_rate(tmp / "src", tmp / "plain.tar")
        opts = IngestOptions(source=str(tmp / "src"), dataset=str(tmp / "ds"), site="bench",
                             modality=args.modality, workers=args.workers, progress=False,
                             quarantine_report=str(tmp / "q.jsonl"))
        result = ingest(opts, b"bench-secret-0123456789")
    mb = nbytes / 1e6
    print(json.dumps({
        "bench": "ingest", "images": args.images, "source_px": 512, "modality": args.modality,
        "workers": args.workers, "cpus": os.cpu_count(), "source_mb": round(mb, 2),
        "ingest": {"seconds": round(result.seconds, 3), "images_per_second": round(args.images / result.seconds, 1),
                   "mb_per_second": round(mb / result.seconds, 2), "added": result.added,
                   "shard_mb": round(result.shard_bytes / 1e6, 2)},
        "plain_tar_copy": {"seconds": round(tar_seconds, 3), "images_per_second": round(args.images / tar_seconds, 1),
                           "mb_per_second": round(mb / tar_seconds, 2)},
        "ingest_vs_io_bound": round(tar_seconds / result.seconds, 4),
        # the largest peak RSS of any exited child (the decode workers; 0 with --workers 1, which decodes here)
        "worker_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "main_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }))


if __name__ == "__main__":
    main()
