"""Loader throughput: batches of LD views at 448 px per second per worker, against raw shard
read + PNG decode alone in the same run, and how many loader workers keep one training step
fed at the step rate of ``bench/step.py`` (measured here unless --step-seconds is given).

Usage: python bench/loader.py [--images 64] [--batch 4] [--step-seconds S]
Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _measure import run_isolated  # noqa: E402
from ingest import make_sources  # noqa: E402


def timed_batches(loader, max_batches: int) -> tuple[int, float]:
    t0, n = time.perf_counter(), 0
    for _ in loader:
        n += 1
        if n == max_batches:
            break
    return n, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4, help="pairs per step (the paper's batch 4)")
    ap.add_argument("--size", type=int, default=448)
    ap.add_argument("--step-seconds", type=float, help="skip measuring bench/step and use this")
    ap.add_argument("--step-width", default="tiny")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)  # one loader worker = one core
    from ldisc.data import StreamLoader
    from ldisc.views import ViewConfig
    from sharding.ingest import IngestOptions, ingest

    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
        tmp = Path(tmp)
        (tmp / "src").mkdir()
        make_sources(tmp / "src", args.images, "fundus")
        ingest(IngestOptions(source=str(tmp / "src"), dataset=str(tmp / "ds"), site="bench", modality="fundus",
                             workers=2, progress=False, quarantine_report=str(tmp / "q.jsonl")),
               b"bench-secret-0123456789")
        raw = StreamLoader(tmp / "ds", batch_size=args.batch, output="images")
        raw_batches, raw_seconds = timed_batches(raw, 10**9)
        views = StreamLoader(tmp / "ds", batch_size=args.batch, view_config=ViewConfig(view_side=args.size))
        view_batches, view_seconds = timed_batches(views, 10**9)
    images_per_batch = 2 * args.batch
    views_rate = view_batches / view_seconds
    if args.step_seconds is None:
        step = run_isolated(str(Path(__file__).resolve().parent / "step.py"), "--one", str(args.size),
                            str(args.batch), "2", "0", "--width", args.step_width, "--steps", "2")
        step_seconds, step_source = step["seconds_per_step"], f"bench/step.py --one {args.size} {args.batch} 2 0 --width {args.step_width}"
    else:
        step_seconds, step_source = args.step_seconds, "--step-seconds"
    print(json.dumps({
        "bench": "loader", "images": args.images, "stored_px": 512, "view_px": args.size, "batch_pairs": args.batch,
        "cpus": os.cpu_count(), "threads_per_worker": 1,
        "raw_read_decode": {"images_per_second": round(raw_batches * images_per_batch / raw_seconds, 1),
                            "batches_per_second": round(raw_batches / raw_seconds, 2)},
        "ld_views_per_worker": {"batches_per_second": round(views_rate, 3),
                                "images_per_second": round(view_batches * images_per_batch / view_seconds, 1),
                                "seconds_per_batch": round(view_seconds / view_batches, 3)},
        "views_vs_raw": round(views_rate / (raw_batches / raw_seconds), 4),
        "training_step_seconds": step_seconds, "step_source": step_source,
        "workers_to_feed_one_step": max(1, math.ceil((1 / step_seconds) / views_rate)),
    }))


if __name__ == "__main__":
    main()
