"""ZeRO stages 0/1/2/3: step time and peak memory of the default model, 2 ranks × 1 thread (ZeRO
partitions over data-parallel ranks), fp32 and bf16. Ratios are against ZeRO 0 fp32 in the same run.
Prints one JSON object. Usage: python bench/zero.py [--steps 8] [--size 128] [--precisions fp32,bf16]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine import measure  # noqa: E402  (same job runner: torchrun + run summary)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--pairs", type=int, default=2, help="pairs per rank (default config: 2)")
    p.add_argument("--precisions", default="fp32,bf16")
    args = p.parse_args()
    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for precision in args.precisions.split(","):
            for zero in (0, 1, 2, 3):
                r = measure(f"z{zero}-{precision}", 2, 1, args.pairs, args,
                            [f"engine.zero_stage={zero}", f"engine.precision={precision}"], Path(tmp))
                rows.append({"zero_stage": zero, "precision": precision, **{k: r[k] for k in (
                    "median_step_seconds", "images_per_second", "peak_rss_bytes_max", "peak_rss_bytes_per_rank",
                    "final_total_loss", "wall_seconds")}})
    base = rows[0]
    for r in rows:
        r["step_time_ratio_vs_zero0_fp32"] = round(r["median_step_seconds"] / base["median_step_seconds"], 3)
        r["peak_rss_ratio_vs_zero0_fp32"] = round(r["peak_rss_bytes_max"] / base["peak_rss_bytes_max"], 3)
    print(json.dumps({"bench": "zero", "ranks": 2, "threads_per_rank": 1, "model": "tiny (default config)",
                      "view_size": args.size, "pairs_per_rank": args.pairs, "steps": args.steps,
                      "load_avg_before_after": [load_before, os.getloadavg()[0]],
                      "note": "peak RSS includes ~0.9 GB of torch+DeepSpeed per process; the tiny model's "
                              "parameters and Adam state are a few MB, so ZeRO's savings are small here",
                      "table": rows}, indent=1))


if __name__ == "__main__":
    main()
