"""Engine throughput: 2 ranks × 1 thread vs. 1 rank × 2 threads at the same global batch (target
ratio ≥ 0.85), and the engine options on 1 rank × 2 threads (channels-last, bf16, bf16 autocast,
torch.compile) as ratios to the fp32 baseline measured in the same run. Prints one JSON object.

Every configuration is a real ``ldisc-pretrain`` job in its own process(es) under torchrun, stage 1
on the default model; figures are medians over the steps after 2 warm-up steps.
Usage: python bench/engine.py [--steps 10] [--size 128] [--pairs 4] [--compile]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from launcher.local import TorchrunSpec, launch_env, torchrun_command  # noqa: E402
from ldisc.train.env import free_port  # noqa: E402
from ldisc.train.summary import run_summary  # noqa: E402


def bench_env(threads: int) -> dict[str, str]:
    """Same OpenMP settings for every configuration; PASSIVE waiting keeps a shared, busy CPU from
    turning 2-thread runs into spin-wait storms (5-8x slower steps seen with the default policy)."""
    return {**launch_env(threads), "OMP_WAIT_POLICY": "PASSIVE"}


def measure(name: str, nproc: int, threads: int, pairs_per_rank: int, args, extra: list[str], work: Path) -> dict:
    run_dir = work / name
    overrides = [f"run_dir={run_dir}", f"threads={threads}", f"train.batch_size={pairs_per_rank}",
                 f"train.stage1_steps={args.steps}", "train.stage2_steps=0", f"train.checkpoint_every={10**6}",
                 "train.progress=false", f"data.view_side={args.size}", "data.source=noise", *extra]
    cmd = torchrun_command(TorchrunSpec(nproc=nproc, rdzv_endpoint=f"127.0.0.1:{free_port()}"), overrides)
    started = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, env=bench_env(threads), capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    return {"ranks": nproc, "threads_per_rank": threads, "pairs_per_rank": pairs_per_rank, "options": extra,
            "wall_seconds": round(time.perf_counter() - started, 1), **run_summary(run_dir)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--size", type=int, default=128, help="view side (default config: 128)")
    p.add_argument("--pairs", type=int, default=4, help="global batch in image pairs (even)")
    p.add_argument("--compile", action="store_true", help="also measure engine.compile=true (slow to compile)")
    args = p.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base = measure("1x2", 1, 2, args.pairs, args, [], work)
        two = measure("2x1", 2, 1, args.pairs // 2, args, [], work)
        options = {"channels_last": ["engine.channels_last=true"], "bf16": ["engine.precision=bf16"],
                   "bf16_autocast": ["engine.precision=bf16-autocast"]}
        if args.compile:
            options["compile"] = ["engine.compile=true"]
        variants = {k: measure(k, 1, 2, args.pairs, args, v, work) for k, v in options.items()}
    ratio = two["images_per_second"] / base["images_per_second"]
    print(json.dumps({
        "bench": "engine", "cpu_count": os.cpu_count(), "load_avg_before_after": [load_before[0], os.getloadavg()[0]],
        "view_size": args.size, "global_pairs": args.pairs, "steps": args.steps,
        "ratio_2ranks_x1thread_vs_1rank_x2threads": round(ratio, 3), "target": 0.85, "meets_target": ratio >= 0.85,
        "baseline_1rank_x2threads": base, "two_ranks_x1thread": two,
        "options_vs_fp32_1x2": {k: {"throughput_ratio": round(v["images_per_second"] / base["images_per_second"], 3),
                                     "peak_rss_ratio": round(v["peak_rss_bytes_max"] / base["peak_rss_bytes_max"], 3),
                                     **v} for k, v in variants.items()},
    }, indent=1))


if __name__ == "__main__":
    main()
