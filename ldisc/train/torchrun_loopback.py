"""torchrun for one machine whose stores listen on loopback only.

``python -m ldisc.train.torchrun_loopback <torchrun arguments>`` is ``torchrun`` with one difference: a c10d
TCPStore server whose host is a loopback address (the rendezvous endpoint ``127.0.0.1:PORT`` and the
agent's store for the workers) listens on that address instead of on every interface, which c10d does
when it binds its own socket. Pass ``--local-addr 127.0.0.1`` too, so that the workers are told a
loopback MASTER_ADDR rather than the host's name. Multi-node jobs use plain torchrun: their stores bind
where the rendezvous configuration says.
"""
from __future__ import annotations

import sys
from datetime import timedelta

import torch.distributed as dist

from ldisc.train.env import is_loopback, loopback_listen_fd

_TCPStore = dist.TCPStore


class LoopbackTCPStore(_TCPStore):
    def __init__(self, host_name: str, port: int, world_size: int | None = None, is_master: bool = False,
                 timeout: timedelta = timedelta(seconds=300), wait_for_workers: bool = True,
                 multi_tenant: bool = False, master_listen_fd: int | None = None, use_libuv: bool = True):
        if is_master and master_listen_fd is None and is_loopback(host_name):
            try:
                master_listen_fd = loopback_listen_fd(host_name, port)
            except OSError as err:   # e.g. another agent of this job hosts the store: as c10d reports it
                raise RuntimeError(f"cannot listen on {host_name}:{port}: {err}") from err
        super().__init__(host_name, port, world_size, is_master, timeout, wait_for_workers, multi_tenant,
                         master_listen_fd, use_libuv)


def main() -> None:
    import torch.distributed.elastic.rendezvous.c10d_rendezvous_backend as c10d_backend
    from torch.distributed.run import main as torchrun_main

    dist.TCPStore = LoopbackTCPStore            # dynamic_rendezvous and elastic.utils look it up here
    c10d_backend.TCPStore = LoopbackTCPStore    # imported by name at module load
    torchrun_main(sys.argv[1:])


if __name__ == "__main__":
    main()
