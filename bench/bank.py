"""Cost of the memory bank: LD step time with K = 0 / 16,384 / 65,536 bank entries, and bank memory.

One process, tiny LDNet, stage 1, batch 2 image pairs at ``--size`` px, ``--threads`` intra-op
threads, Adam. The bank is filled with unit vectors before timing, so every timed step scores all K
entries; a step = views → forward → loss (with the bank) → backward → optimiser → enqueue.
Prints one JSON object: the fastest and the median step seconds per K and their ratios to K = 0
(target ≤ 1.15 at 65,536; the ratio of the fastest steps is the headline, as on a shared machine
the median measures the neighbours too, and the 1-minute load average is recorded),
this process's bank bytes, and the per-rank shard bytes for W = 2, 4, 8 (rank 0, the largest).

    python bench/bank.py [--size 192] [--steps 6] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F

from ldisc.bank import ShardedMemoryBank, feed_bank, shard_bytes
from ldisc.model import LDNet
from ldisc.objectives.objective import LDObjective, ObjectiveConfig
from ldisc.views import ViewConfig, make_views_batch

EMBED = 32


class Runner:
    """One training setup (tiny LDNet, stage 1, Adam) with a bank of ``capacity`` entries, pre-filled."""

    def __init__(self, capacity: int, size: int, batch: int, seed: int = 0):
        torch.manual_seed(seed)
        self.gen = torch.Generator().manual_seed(seed)
        self.size = size
        self.model = LDNet("tiny", EMBED, 0).train()
        self.objective = LDObjective(ObjectiveConfig(stage=1))
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.bank = ShardedMemoryBank(capacity, EMBED)
        if capacity:
            self.bank.enqueue(F.normalize(torch.randn(capacity, EMBED, generator=self.gen), dim=1))
        self.images = torch.rand(2, batch, 3, size + size // 8, size + size // 8, generator=self.gen)

    def step(self) -> float:
        """Seconds of one step: views → forward → loss → backward → optimiser → enqueue."""
        t0 = time.perf_counter()
        views = make_views_batch(self.images[0], self.images[1], ViewConfig(view_side=self.size), self.gen)
        out = self.objective(self.model, views, bank_negatives=self.bank.bank_negatives())
        self.opt.zero_grad()
        out.total.backward()
        self.opt.step()
        feed_bank(self.bank, out.patch_vectors, views)
        return time.perf_counter() - t0


def interleaved_times(capacities: list[int], size: int, batch: int, steps: int, warmup: int) -> dict[int, list[float]]:
    """Step seconds per capacity; the capacities take turns step by step, so a change in the
    machine's load (it is shared) affects them alike."""
    runners = {k: Runner(k, size, batch) for k in capacities}
    times: dict[int, list[float]] = {k: [] for k in capacities}
    for i in range(warmup + steps):
        for k, runner in runners.items():
            seconds = runner.step()
            if i >= warmup:
                times[k].append(seconds)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=224, help="view side (the bank costs the same per query: smaller steps show a larger ratio)")
    p.add_argument("--batch", type=int, default=4, help="pairs per step (paper: 4)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sizes", type=int, nargs="+", default=[0, 16384, 65536])
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    load_before = os.getloadavg()[0]
    times = interleaved_times(a.sizes, a.size, a.batch, a.steps, a.warmup)
    best = {k: min(v) for k, v in times.items()}
    median = {k: statistics.median(v) for k, v in times.items()}
    bank_bytes = {k: shard_bytes(k, 1, EMBED) for k in a.sizes}
    print(json.dumps({
        "bench": "bank", "model": "tiny", "stage": 1, "view_px": a.size, "batch_pairs": a.batch,
        "threads": a.threads, "queries_per_step": 4 * a.batch * 64, "timed_steps": a.steps,
        "load_avg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "step_s_min": {str(k): round(v, 4) for k, v in best.items()},
        "step_s_median": {str(k): round(v, 4) for k, v in median.items()},
        "ratio_vs_k0": {str(k): round(v / best[0], 3) for k, v in best.items()} if 0 in best else None,
        "ratio_vs_k0_median": {str(k): round(v / median[0], 3) for k, v in median.items()} if 0 in median else None,
        "target_ratio_at_65536": 1.15,
        "bank_bytes_one_process": {str(k): v for k, v in bank_bytes.items()},
        "shard_bytes_per_rank": {str(k): {str(w): shard_bytes(k, w, EMBED) for w in (2, 4, 8)}
                                 for k in a.sizes if k},
    }))


if __name__ == "__main__":
    main()
