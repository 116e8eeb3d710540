"""Figures of a finished (or running) pretraining run, read from its files: step times, throughput,
peak memory per rank. Used by the benchmarks and handy after any run (``python -m ldisc.train.summary DIR``)."""
from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

_RSS = re.compile(r'^ldisc_process_max_resident_memory_bytes\{[^}]*\brank="(\d+)"[^}]*\} (\S+)$', re.M)


def run_summary(run_dir: str | Path, skip: int = 2) -> dict:
    """Median step seconds and global images/s over the steps after the first ``skip`` (warm-up),
    and each rank's peak resident memory (from ``metrics.rank<R>.prom``)."""
    run_dir = Path(run_dir)
    records = [json.loads(x) for x in (run_dir / "losses.jsonl").read_text().splitlines() if x.strip()]
    timed = records[skip:] or records
    if not timed:
        raise ValueError(f"{run_dir}: no steps logged")
    seconds = statistics.median(r["seconds"] for r in timed)
    rss = {}
    for prom in sorted(run_dir.glob("metrics.rank*.prom")):
        for rank, value in _RSS.findall(prom.read_text()):
            rss[int(rank)] = float(value)
    return {"steps": len(records), "timed_steps": len(timed), "median_step_seconds": round(seconds, 4),
            "images_per_second": round(statistics.median(r["images_per_s"] for r in timed), 3),
            "final_total_loss": records[-1]["total"],
            "peak_rss_bytes_per_rank": [rss[r] for r in sorted(rss)],
            "peak_rss_bytes_max": max(rss.values()) if rss else None}


if __name__ == "__main__":
    print(json.dumps(run_summary(sys.argv[1]), indent=1))
