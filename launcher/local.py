"""Local launches of ``ldisc-pretrain``: the torchrun command line for one node of a job.

The same command runs on a laptop (one node, N CPU processes), on each host of a multi-node job
(``nnodes``/``node_rank`` with a c10d rendezvous), and inside a Kubernetes pod. torchrun, never the
``deepspeed`` launcher: it supervises the workers and restarts them all (``max_restarts``) when one
dies, which ``train.resume=auto`` turns into a resume from the newest complete checkpoint.

    python -m launcher.local --nproc 2 -- run_dir=runs/a engine.zero_stage=2
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import dataclass

from ldisc.malloc import cpu_malloc_env
from ldisc.train.env import is_loopback


@dataclass
class TorchrunSpec:
    nproc: int = 1
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str = "127.0.0.1:29400"
    rdzv_id: str = "ldisc"
    max_restarts: int = 0
    module: str = "ldisc.train.cli"

    def __post_init__(self):
        if self.nproc < 1 or self.nnodes < 1 or not 0 <= self.node_rank < self.nnodes:
            raise ValueError(f"bad torchrun layout: nproc={self.nproc} nnodes={self.nnodes} node_rank={self.node_rank}")
        if ":" not in self.rdzv_endpoint:
            raise ValueError(f"rdzv_endpoint must be HOST:PORT, got {self.rdzv_endpoint!r}")


def torchrun_command(spec: TorchrunSpec, overrides: list[str], python: str = sys.executable) -> list[str]:
    """argv of one torchrun agent running ``spec.module`` with Hydra ``overrides``."""
    host = spec.rdzv_endpoint.rsplit(":", 1)[0]
    # one machine: stores listen on loopback only and workers are told a loopback MASTER_ADDR
    local = ["ldisc.train.torchrun_loopback", "--local-addr", host] if is_loopback(host) else ["torch.distributed.run"]
    return [python, "-m", *local,
            "--nnodes", str(spec.nnodes), "--node-rank", str(spec.node_rank),
            "--nproc-per-node", str(spec.nproc), "--max-restarts", str(spec.max_restarts),
            "--rdzv-backend", "c10d", "--rdzv-endpoint", spec.rdzv_endpoint, "--rdzv-id", spec.rdzv_id,
            "-m", spec.module, *overrides]


def launch_env(threads: int | None = None, allocator: str | None = None) -> dict[str, str]:
    """The environment of a CPU-friendly launch: DeepSpeed defaults, an allocator that keeps large
    blocks (:func:`ldisc.malloc.cpu_malloc_env`: tcmalloc where installed, else glibc told to keep
    them; ``$LDISC_MALLOC`` or ``allocator`` choose; what the caller set stays), and the per-worker
    thread count."""
    env = dict(os.environ)
    env.setdefault("DS_BUILD_OPS", "0")
    for key, value in cpu_malloc_env(allocator).items():
        env.setdefault(key, value)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nproc", type=int, default=1)
    p.add_argument("--nnodes", type=int, default=1)
    p.add_argument("--node-rank", type=int, default=0)
    p.add_argument("--rdzv-endpoint", default="127.0.0.1:29400")
    p.add_argument("--rdzv-id", default="ldisc")
    p.add_argument("--max-restarts", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS per worker")
    p.add_argument("--dry-run", action="store_true", help="print the command and exit")
    p.add_argument("overrides", nargs="*", help="Hydra overrides for ldisc-pretrain")
    a = p.parse_args(argv)
    spec = TorchrunSpec(a.nproc, a.nnodes, a.node_rank, a.rdzv_endpoint, a.rdzv_id, a.max_restarts)
    cmd = torchrun_command(spec, a.overrides)
    if a.dry_run:
        print(" ".join(cmd))
        return 0
    return subprocess.call(cmd, env=launch_env(a.threads))


if __name__ == "__main__":
    sys.exit(main())
