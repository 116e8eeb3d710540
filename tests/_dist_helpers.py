"""Run a function in W real processes joined by a gloo process group (CPU), for tests.

    results = run_ranks(fn, world_size=2, args=(...))   # fn(rank, world_size, *args) -> picklable

``fn`` must be importable by the children (a module-level function of a test module or of ``ldisc``).
Each child: ``MASTER_ADDR=127.0.0.1`` and a free port, one intra-op thread, ``init_process_group
("gloo")``, calls ``fn``, saves its return value, then ``barrier()``, ``destroy_process_group()``,
flushes and leaves with ``os._exit`` — 2-process gloo runs can otherwise SIGABRT at interpreter exit
after all work is done (see NOTES-cpu-stack.md). A failing rank's traceback is raised in the parent.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch
import torch.multiprocessing as mp

from ldisc.train.env import free_port  # noqa: F401  (re-exported for the tests)

_LOOPBACK = "lo"



def _init_env(rank: int, world_size: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    if Path(f"/sys/class/net/{_LOOPBACK}").exists():
        os.environ.setdefault("GLOO_SOCKET_IFNAME", _LOOPBACK)


def _child(rank: int, world_size: int, port: int, out_dir: str, fn: Callable, args: tuple) -> None:
    import torch.distributed as dist
    code = 0
    try:
        _init_env(rank, world_size, port)
        torch.set_num_threads(1)
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
        result = fn(rank, world_size, *args)
        torch.save(result, Path(out_dir) / f"result_{rank}.pt")
        dist.barrier()
        dist.destroy_process_group()
    except BaseException:  # noqa: BLE001 - report every failure to the parent
        (Path(out_dir) / f"error_{rank}.txt").write_text(traceback.format_exc())
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_ranks(fn: Callable, world_size: int = 2, args: tuple = (), timeout: float = 180.0) -> list[Any]:
    """``[fn(0, W, *args), ..., fn(W−1, W, *args)]``, each computed in its own process of one group."""
    ctx = mp.get_context("spawn")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="ldisc-ranks-") as out_dir:
        procs = [ctx.Process(target=_child, args=(r, world_size, port, out_dir, fn, args), daemon=False)
                 for r in range(world_size)]
        for p in procs:
            p.start()
        deadline = time.monotonic() + timeout
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        hung = [r for r, p in enumerate(procs) if p.is_alive()]
        for r in hung:
            procs[r].kill()
            procs[r].join()
        errors = {r: (Path(out_dir) / f"error_{r}.txt") for r in range(world_size)}
        messages = [f"rank {r}:\n{path.read_text()}" for r, path in errors.items() if path.exists()]
        if messages:
            raise RuntimeError("\n".join(messages))
        if hung:
            raise TimeoutError(f"ranks {hung} still running after {timeout} s")
        bad = {r: p.exitcode for r, p in enumerate(procs) if p.exitcode != 0}
        if bad:
            raise RuntimeError(f"ranks exited with codes {bad}")
        return [torch.load(Path(out_dir) / f"result_{r}.pt", weights_only=False) for r in range(world_size)]
