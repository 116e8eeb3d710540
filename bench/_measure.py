"""Shared helpers for benchmarks: run a measurement in a fresh process and read its peak memory."""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

from ldisc.train.env import CPU_MALLOC_ENV as MALLOC_KEEP  # noqa: F401  (re-exported for the benches)
from ldisc.train.metrics import current_rss_bytes as rss_bytes  # noqa: F401  (re-exported)


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024




def run_isolated(script: str, *args: str, threads: int = 2, timeout: int = 900, env: dict | None = None) -> dict:
    """Run ``python script args`` with ``threads`` intra-op threads; it prints one JSON object."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), **(env or {}))
    out = subprocess.run([sys.executable, script, *args], env=env, capture_output=True, text=True,
                         timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{script} {args} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])
