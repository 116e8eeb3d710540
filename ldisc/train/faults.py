"""Test-only fault injection, driven by environment variables (never set in normal runs).

``LDISC_FAULT_KILL_AT_STEP=N`` (with ``LDISC_FAULT_KILL_RANK``, default 1) makes that rank SIGKILL
itself when step N begins, before its forward pass — mid-epoch, between checkpoints.
``LDISC_FAULT_KILL_IN_SAVE=N`` kills rank 0 inside the save of step N, after its files are written
and before the checkpoint is marked complete. Either fires only on the first attempt of a torchrun
job (``TORCHELASTIC_RESTART_COUNT`` absent or 0), so the restarted job runs through.
``LDISC_FAULT_ENOSPC_IN_SAVE=N`` makes every rank's writes of the save of step N fail with ENOSPC (a disk
full where no small filesystem can be mounted). ``LDISC_FAULT_LOG=FILE`` appends a JSON line
``{"fault", "step", "rank", "time"}`` before a fault fires (for the drills' time to recover).
"""
from __future__ import annotations

import errno
import json
import os
import signal
import time


def _first_attempt() -> bool:
    return os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") in ("", "0")


def _log(fault: str, step: int, rank: int) -> None:
    path = os.environ.get("LDISC_FAULT_LOG")
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps({"fault": fault, "step": step, "rank": rank, "time": time.time()}) + "\n")


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def maybe_kill_at_step(step: int, rank: int) -> None:
    at = os.environ.get("LDISC_FAULT_KILL_AT_STEP")
    if at and int(at) == step and rank == int(os.environ.get("LDISC_FAULT_KILL_RANK", 1)) and _first_attempt():
        _log("kill_at_step", step, rank)
        _kill()


def maybe_kill_in_save(step: int, rank: int) -> None:
    at = os.environ.get("LDISC_FAULT_KILL_IN_SAVE")
    if at and int(at) == step and rank == 0 and _first_attempt():
        _log("kill_in_save", step, rank)
        _kill()


def maybe_fail_in_save(step: int, rank: int, directory) -> None:
    at = os.environ.get("LDISC_FAULT_ENOSPC_IN_SAVE")
    if at and int(at) == step:
        _log("enospc_in_save", step, rank)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))


def maybe_stop_at_step(step: int, rank: int) -> None:
    """``LDISC_FAULT_STOP_AT_STEP=N`` (rank ``LDISC_FAULT_STOP_RANK``, default 0) SIGSTOPs that rank when step N
    begins, so that a test can inspect the live job (its listening sockets) and then kill it."""
    at = os.environ.get("LDISC_FAULT_STOP_AT_STEP")
    if at and int(at) == step and rank == int(os.environ.get("LDISC_FAULT_STOP_RANK", 0)):
        os.kill(os.getpid(), signal.SIGSTOP)
