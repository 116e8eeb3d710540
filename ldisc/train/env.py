"""The process environment of a training run: torchrun's env contract, DeepSpeed's, a clean exit.

Every run — one process without a launcher, torchrun on one machine, torchrun agents on many nodes —
sees the same variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). Without a launcher
:func:`single_process_env` supplies them for the duration of a run and restores what was there.
"""
from __future__ import annotations

import contextlib
import importlib
import ipaddress
import os
import socket
import sys
import warnings
from dataclasses import dataclass

import torch

from ldisc.dist import barrier
from ldisc.cli_errors import require

ENV_CONTRACT = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def deepspeed_env_defaults() -> None:
    """Defaults DeepSpeed reads at import: the CPU accelerator where no CUDA device is present,
    no op builds at install/JIT time. Explicit settings win."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("DS_BUILD_OPS", "0")
    warnings.filterwarnings("ignore", message=".*torch.jit.script_method.*", category=DeprecationWarning)


def import_deepspeed():
    """Import DeepSpeed with the defaults above and without the shared-memory comm op build (~20 s
    on CPU; gloo needs none of it)."""
    deepspeed_env_defaults()
    deepspeed = require("deepspeed", "train")

    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    return deepspeed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def single_process_env():
    """Set the env contract for one process (rank 0 of 1) where no launcher did; restore on exit."""
    if all(k in os.environ for k in ("RANK", "WORLD_SIZE")):
        yield
        return
    saved = {k: os.environ.get(k) for k in ENV_CONTRACT}
    os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"})
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = os.environ.get("MASTER_PORT") or str(free_port())
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool            # this run initialised torch.distributed and must tear it down


def init_distributed(backend: str = "auto") -> DistInfo:
    """Initialise torch.distributed through DeepSpeed (gloo on CPU, nccl on CUDA unless told)."""
    deepspeed = import_deepspeed()
    from deepspeed.accelerator import get_accelerator

    acc = get_accelerator()
    owns = not torch.distributed.is_initialized()
    backend = acc.communication_backend_name() if backend == "auto" else backend
    if owns and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        _init_on_attempt_store(backend)
    elif owns:
        _init_on_own_store(backend)
    if owns:
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if acc.device_name() != "cpu":
        acc.set_device(local_rank)
    device = torch.device(acc.current_device_name())
    return DistInfo(torch.distributed.get_rank(), torch.distributed.get_world_size(), local_rank, device, owns)


def _init_on_attempt_store(backend: str) -> None:
    """Join the process group through a key space of this torchrun attempt.

    torchrun's c10d rendezvous shares its TCPStore with the workers and, on a restart, hands the new
    workers the same store without a per-attempt prefix: gloo then reads the dead workers' addresses
    and hangs or fails with "Connection refused". Prefixing the keys with the restart count avoids it.
    """
    from datetime import timedelta

    store = torch.distributed.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                                       is_master=False, timeout=timedelta(minutes=5))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    torch.distributed.init_process_group(backend, store=torch.distributed.PrefixStore(f"/ldisc/attempt_{attempt}", store),
                                         rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]))


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


def loopback_listen_fd(host: str, port: int) -> int:
    """A listening socket on ``host:port`` (a loopback address), handed over as a file descriptor.

    c10d's TCPStore server listens on every interface when it binds its own socket; given a socket it
    listens where that socket is bound."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((socket.gethostbyname(host), port))
    sock.listen(128)
    return sock.detach()


def _init_on_own_store(backend: str) -> None:
    """Join the process group without torchrun: one process needs no store server at all (an in-process
    HashStore); several processes on one machine (MASTER_ADDR loopback) get a store listening on loopback
    only. Otherwise (MASTER_ADDR on the network) torch's env:// rendezvous binds as configured."""
    from datetime import timedelta

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    addr, port = os.environ.get("MASTER_ADDR", "127.0.0.1"), int(os.environ.get("MASTER_PORT", 0) or 0)
    if world == 1:
        store = torch.distributed.HashStore()
    elif is_loopback(addr):
        fd = loopback_listen_fd(addr, port) if rank == 0 else None
        store = torch.distributed.TCPStore(addr, port, world, rank == 0, timedelta(minutes=5), master_listen_fd=fd)
    else:
        return
    torch.distributed.init_process_group(backend, store=store, rank=rank, world_size=world)


def shutdown(info: DistInfo) -> None:
    """Barrier and tear down the process group of a multi-process job this run created.

    A one-process group stays: DeepSpeed caches its groups module-wide and cannot initialise again
    in the same process after a destroy, so later runs of the Python API reuse it."""
    if info.owns_group and info.world_size > 1 and torch.distributed.is_initialized():
        barrier()
        torch.distributed.destroy_process_group()


def hard_exit(code: int = 0) -> None:
    """Exit without running interpreter teardown: a 2-process gloo job occasionally aborts in C++
    destructors at exit after all work is done (see NOTES-cpu-stack). Call after :func:`shutdown`."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
