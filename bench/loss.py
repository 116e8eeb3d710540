"""Patch NCE forward+backward: memory-lean chunked criterion vs. the authors' N×N formulation.

Prints one JSON object: per N, seconds and peak-memory increase of each, and the ratios
(ours / baseline). Target: ≤ 1/3 of the baseline's peak memory at N = 16,384, no slower.
Each measurement runs in its own process so that peak RSS belongs to that measurement alone.
The tile side is the composed config's ``objective.chunk`` unless ``--chunk`` is given.
Usage: python bench/loss.py [--sizes 1024,4096,16384] [--threads 2] [--chunk N]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import peak_rss_bytes, rss_bytes, run_isolated  # noqa: E402


def measure_one(method: str, n: int, repeats: int, chunk: int) -> dict:
    import torch
    import torch.nn.functional as F

    from ldisc.objectives.nce import authors_nce, instance_nce

    torch.manual_seed(0)
    x = F.normalize(torch.randn(n, 32), dim=1).requires_grad_()
    idx = torch.arange(n)
    pos = (idx + n // 2) % n

    def step():
        loss = authors_nce(x) if method == "authors" else instance_nce(x, x, idx, pos, 0.1, chunk).mean()
        loss.backward()
        x.grad = None
        return float(loss.detach())

    base = rss_bytes()
    times, value = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        value = step()
        times.append(time.perf_counter() - t)
    return {"seconds": statistics.median(times), "peak_extra_bytes": peak_rss_bytes() - base, "loss": value}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1024,2048,4096,8192,16384")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=None, help="NCE tile side (default: objective.chunk)")
    ap.add_argument("--one", nargs=2, metavar=("METHOD", "N"))
    args = ap.parse_args()
    if args.chunk is None:
        from ldisc.config import compose
        args.chunk = int(compose("pretrain").objective.chunk)
    if args.one:
        n = int(args.one[1])
        print(json.dumps(measure_one(args.one[0], n, 3 if n <= 4096 else 1, args.chunk)))
        return
    rows = []
    for n in map(int, args.sizes.split(",")):
        ours = run_isolated(__file__, "--one", "chunked", str(n), "--chunk", str(args.chunk), threads=args.threads)
        base = run_isolated(__file__, "--one", "authors", str(n), "--chunk", str(args.chunk), threads=args.threads)
        rows.append({"n": n, "ours_seconds": round(ours["seconds"], 4), "authors_seconds": round(base["seconds"], 4),
                     "ours_peak_extra_mb": round(ours["peak_extra_bytes"] / 2**20, 1),
                     "authors_peak_extra_mb": round(base["peak_extra_bytes"] / 2**20, 1),
                     "time_ratio": round(ours["seconds"] / base["seconds"], 3),
                     "memory_ratio": round(ours["peak_extra_bytes"] / max(base["peak_extra_bytes"], 1), 4),
                     "loss_abs_diff": abs(ours["loss"] - base["loss"])})
    last = rows[-1]
    print(json.dumps({"bench": "loss", "threads": args.threads, "chunk": args.chunk, "rows": rows,
                      "at_n": last["n"], "memory_ratio": last["memory_ratio"], "time_ratio": last["time_ratio"],
                      "target": "memory_ratio <= 0.333 and time_ratio <= 1.0",
                      "pass": last["memory_ratio"] <= 1 / 3 and last["time_ratio"] <= 1.0}))


if __name__ == "__main__":
    main()
