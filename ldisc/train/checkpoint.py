"""Atomic checkpoint directories: ``<run_dir>/checkpoints/step_<N>/``, newest-complete discovery, pruning.

A checkpoint is written into a temporary sibling directory and renamed into place only when every
file is on disk, with a ``COMPLETE`` marker written last; a crash mid-save leaves the previous
checkpoint as the newest complete one. Writers put whatever files they need into the directory.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable

from ldisc.train import checkpoint_integrity as integrity

MARKER = "COMPLETE"
PREFIX = "step_"
TMP_PREFIX = ".tmp-"


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def step_dir_name(step: int) -> str:
    return f"{PREFIX}{step:07d}"


def is_complete(path: Path) -> bool:
    return (path / MARKER).is_file()


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and is_complete(p)]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def resolve_resume(resume: str | None, run_dir: str | Path) -> Path | None:
    """``None`` → no resume; ``auto`` → newest complete checkpoint of ``run_dir`` that verifies against its
    checksums (or none; skipped ones are logged); else a path, which must verify."""
    if resume in (None, "", "none", "null"):
        return None
    if resume == "auto":
        return integrity.newest_verified(list_checkpoints(run_dir))[0]
    path = Path(resume)
    if not is_complete(path):
        raise FileNotFoundError(f"{path} is not a complete ldisc checkpoint (no {MARKER} marker)")
    return integrity.require_verified(path)


def save_checkpoint(run_dir: str | Path, step: int, write: Callable[[Path], None], keep: int = 3,
                    meta: dict | None = None, rank: int = 0,
                    barrier: Callable[[], None] = lambda: None) -> tuple[Path, float]:
    """Create ``step_<step>`` atomically via ``write(tmp_dir)``; keep the newest ``keep``. → (path, seconds).

    Collective when several ranks call it with their ``rank`` and a shared ``barrier``: rank 0 makes
    the temporary directory (a name every rank can derive), every rank writes its files into it and
    flushes them, and after a barrier rank 0 writes ``meta.json`` and the marker and renames.
    """
    started = time.perf_counter()
    root = checkpoint_root(run_dir)
    final = root / step_dir_name(step)
    tmp = root / f"{TMP_PREFIX}{final.name}"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(run_dir)
        tmp.mkdir()
    barrier()
    write(tmp)
    _fsync_dir_files(tmp)
    barrier()
    if rank == 0:
        (tmp / "meta.json").write_text(json.dumps({"step": step, "time": time.time(), **(meta or {})}, indent=1))
        _fsync_dir_files(tmp, only=("meta.json",))
        (tmp / MARKER).write_text("ok\n")
        _fsync_dir_files(tmp, only=(MARKER,))
        integrity.write_manifest(tmp)          # last: checksums of every file above
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        prune(run_dir, keep)
    barrier()
    return final, time.perf_counter() - started


def remove_stale_temporaries(run_dir: str | Path) -> None:
    """Delete half-written checkpoints left by a crash during a save."""
    root = checkpoint_root(run_dir)
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(TMP_PREFIX):
                shutil.rmtree(p, ignore_errors=True)


def prune(run_dir: str | Path, keep: int) -> None:
    if keep <= 0:
        return
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _fsync_dir_files(path: Path, only: tuple[str, ...] | None = None) -> None:
    files = [path / n for n in only] if only else path.rglob("*")
    for f in files:
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
