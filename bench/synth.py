"""Benchmark of the procedural data generator: images/s at 512x512 on one thread.

Prints one JSON object: per-modality throughput, the 20 images/s target, pass/fail.
Run: OMP_NUM_THREADS=1 python bench/synth.py   (threads are also pinned to 1 below)
"""

from __future__ import annotations

import json
import os
import time

for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(variable, "1")

from ldisc.synth import MODALITIES, generate  # noqa: E402

TARGET_IMAGES_PER_SECOND = 20.0
SIZE = 512
SECONDS_PER_MODALITY = 5.0


def images_per_second(modality: str) -> float:
    """Generate images for about SECONDS_PER_MODALITY seconds (after a warm-up) and time it."""
    generate(modality, 0, SIZE)  # warm caches (coordinate grids, noise table)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < SECONDS_PER_MODALITY:
        generate(modality, 1000 + count, SIZE)
        count += 1
    return count / (time.perf_counter() - started)


def main() -> None:
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # the generator itself does not need torch
        pass
    rates = {modality: round(images_per_second(modality), 1) for modality in MODALITIES}
    print(json.dumps({
        "benchmark": "synth",
        "size": SIZE,
        "threads": 1,
        "images_per_second": rates,
        "target_images_per_second": TARGET_IMAGES_PER_SECOND,
        "pass": all(rate >= TARGET_IMAGES_PER_SECOND for rate in rates.values()),
    }))


if __name__ == "__main__":
    main()
