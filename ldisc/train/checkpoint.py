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

MARKER = "COMPLETE"
PREFIX = "step_"


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
    """``None`` → no resume; ``auto`` → newest complete checkpoint of ``run_dir`` (or none); else a path."""
    if resume in (None, "", "none", "null"):
        return None
    if resume == "auto":
        return latest_checkpoint(run_dir)
    path = Path(resume)
    if not is_complete(path):
        raise FileNotFoundError(f"{path} is not a complete ldisc checkpoint (no {MARKER} marker)")
    return path


def save_checkpoint(run_dir: str | Path, step: int, write: Callable[[Path], None], keep: int = 3,
                    meta: dict | None = None) -> tuple[Path, float]:
    """Create ``step_<step>`` atomically via ``write(tmp_dir)``; keep the newest ``keep``. → (path, seconds)."""
    started = time.perf_counter()
    root = checkpoint_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    write(tmp)
    (tmp / "meta.json").write_text(json.dumps({"step": step, "time": time.time(), **(meta or {})}, indent=1))
    _fsync_dir_files(tmp)
    (tmp / MARKER).write_text("ok\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    prune(run_dir, keep)
    return final, time.perf_counter() - started


def prune(run_dir: str | Path, keep: int) -> None:
    if keep <= 0:
        return
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _fsync_dir_files(path: Path) -> None:
    for f in path.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
