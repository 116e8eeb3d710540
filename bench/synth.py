"""Benchmark of the procedural data generator: images/s at 512x512 on one thread.

Prints one JSON object: per-modality throughput, the 20 images/s target, pass/fail.
Run: OMP_NUM_THREADS=1 python bench/synth.py   (threads are also pinned to 1 below)

Throughput is reported twice: per CPU-second of this process (what one core delivers; this
decides pass/fail, so that other jobs sharing the machine do not fail it) and per wall-clock
second (equal to the former on an idle machine). The load average is printed for context.
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


def images_per_second(modality: str) -> tuple[float, float]:
    """(images per CPU-second, images per wall-second) over about SECONDS_PER_MODALITY s."""
    generate(modality, 0, SIZE)  # warm caches (coordinate grids, noise table)
    count, wall, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - wall < SECONDS_PER_MODALITY:
        generate(modality, 1000 + count, SIZE)
        count += 1
    return count / (time.process_time() - cpu), count / (time.perf_counter() - wall)


def main() -> None:
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # the generator itself does not need torch
        pass
    measured = {modality: images_per_second(modality) for modality in MODALITIES}
    per_cpu = {modality: round(rates[0], 1) for modality, rates in measured.items()}
    print(json.dumps({
        "benchmark": "synth",
        "size": SIZE,
        "threads": 1,
        "images_per_second": per_cpu,
        "images_per_wall_second": {modality: round(r[1], 1) for modality, r in measured.items()},
        "load_average_1min": round(os.getloadavg()[0], 2),
        "target_images_per_second": TARGET_IMAGES_PER_SECOND,
        "pass": all(rate >= TARGET_IMAGES_PER_SECOND for rate in per_cpu.values()),
    }))


if __name__ == "__main__":
    main()
