"""Shared helpers for benchmarks: run a measurement in a fresh process and read its peak memory."""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

from ldisc.malloc import GLIBC_KEEP_ENV, cpu_malloc_env
from ldisc.train.metrics import current_rss_bytes as rss_bytes  # noqa: F401  (re-exported)


def malloc_settings(names: list[str]) -> dict[str, dict[str, str]]:
    """Allocator settings by name: ``launcher`` (what ``ldisc-launch`` gives its training processes on
    this machine: tcmalloc where installed, else glibc kept), ``glibc_kept`` (glibc told to keep freed
    blocks) and ``default`` (glibc as it comes). ``glibc_kept`` is left out where it is the launcher's."""
    known = {"launcher": cpu_malloc_env("auto"), "glibc_kept": dict(GLIBC_KEEP_ENV), "default": {}}
    unknown = set(names) - set(known)
    if unknown:
        raise SystemExit(f"unknown --malloc {sorted(unknown)}; choose from {list(known)}")
    out = {n: known[n] for n in names}
    if "launcher" in out and out.get("glibc_kept") == out["launcher"]:
        del out["glibc_kept"]
    return out


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
