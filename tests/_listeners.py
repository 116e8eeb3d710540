"""List the sockets that processes listen on (TCP LISTEN, bound UDP) and tell loopback from the rest."""
from __future__ import annotations

import ipaddress

import psutil


def process_tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root] + root.children(recursive=True)


def listeners(procs: list[psutil.Process]) -> list[tuple[int, str, str, int]]:
    """(pid, process name, ip, port) of every listening TCP socket and bound, unconnected UDP socket."""
    found = []
    for proc in procs:
        try:
            conns = proc.net_connections(kind="inet")
            name = proc.name()
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        for c in conns:
            if c.status == psutil.CONN_LISTEN or (c.status == psutil.CONN_NONE and not c.raddr):
                found.append((proc.pid, name, c.laddr.ip, c.laddr.port))
    return found


def is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def exposed(found: list[tuple[int, str, str, int]]) -> list[tuple[int, str, str, int]]:
    """The listeners not bound to a loopback address (wildcards 0.0.0.0 and :: included)."""
    return [f for f in found if not is_loopback(f[2])]
