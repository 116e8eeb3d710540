"""Atomic checkpoint directories: ``<run_dir>/checkpoints/step_<N>/``, newest-complete discovery, pruning.

A checkpoint is written into a temporary sibling directory and renamed into place only when every
file is on disk, with a ``COMPLETE`` marker written last; a crash mid-save leaves the previous
checkpoint as the newest complete one. Writers put whatever files they need into the directory.

Names: ``latest`` is the newest complete checkpoint; ``best`` is the one with the lowest validation
loss of the last stage that had one (the authors' ``model_best``), recorded in ``checkpoints/BEST``
(JSON, replaced atomically) and never pruned. :func:`resolve_checkpoint` turns ``<run_dir>/best``,
``<run_dir>/latest`` or a checkpoint directory into a checkpoint directory, for ``train.resume``,
``train.init_from`` and ``ldisc-eval checkpoints=[…]``.

This module owns the layout: directory and file names below are imported wherever a checkpoint is
written or read (trainer, evaluation, ``--watch``, the application tools), never spelled again.
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
BEST_FILE = "BEST"
NAMES = ("latest", "best")
MODEL_FILE = "model.pt"                # every weight of the network of the stage it was saved in
TRAINER_FILE = "trainer.pt"            # step, stage, config, objective / shape-prior / key-encoder state
BANK_DIR = "bank"                      # memory-bank shards (ldisc.bank.checkpoint)
ENGINE_DIR = "ds"                      # DeepSpeed's tag directory: weights, optimizer partitions, scheduler
ENCODER_FILE = "encoder.pt"            # the encoder alone (ldisc.model.save_encoder)
ENCODER_FILES = (ENCODER_FILE, "encoder.safetensors")


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def step_dir_name(step: int) -> str:
    return f"{PREFIX}{step:07d}"


def step_of(path: str | Path) -> int | None:
    """The step a checkpoint directory (or any path inside one) names, or None: ``…/step_0000100/…`` → 100."""
    steps = [int(p[len(PREFIX):]) for p in Path(path).parts if p.startswith(PREFIX) and p[len(PREFIX):].isdigit()]
    return steps[-1] if steps else None


def run_dir_of(checkpoint_dir: str | Path) -> Path:
    """The run directory of ``<run_dir>/checkpoints/step_N`` (or of a bare ``<dir>/step_N``)."""
    parent = Path(checkpoint_dir).parent
    return parent.parent if parent.name == "checkpoints" else parent


def rng_file(rank: int) -> str:
    """Per-rank RNG states (Python, NumPy, torch)."""
    return f"rank_{rank:05d}.pt"


def position_file(rank: int) -> str:
    """Per-rank data position (JSON, :mod:`ldisc.data.source`)."""
    return f"data_rank_{rank:05d}.json"


def encoder_file(checkpoint_dir: str | Path) -> Path | None:
    """The exported encoder of a checkpoint directory (``encoder.pt``, else ``encoder.safetensors``)."""
    found = [Path(checkpoint_dir) / n for n in ENCODER_FILES if (Path(checkpoint_dir) / n).is_file()]
    return found[0] if found else None


def is_complete(path: Path) -> bool:
    return (path / MARKER).is_file()


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and step_of(p.name) is not None and is_complete(p)]
    return sorted(found, key=lambda p: step_of(p.name))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def best_record(run_dir: str | Path) -> dict | None:
    """``{"checkpoint": "step_…", "stage": s, "val_loss": v, "step": n}`` of ``best``, or None."""
    path = checkpoint_root(run_dir) / BEST_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def best_checkpoint(run_dir: str | Path) -> Path | None:
    record = best_record(run_dir)
    if record is None:
        return None
    path = checkpoint_root(run_dir) / record["checkpoint"]
    return path if is_complete(path) else None


def mark_best(run_dir: str | Path, checkpoint: Path, stage: int, val_loss: float, step: int) -> None:
    """Point ``best`` at ``checkpoint`` (atomic replace of ``checkpoints/BEST``)."""
    root = checkpoint_root(run_dir)
    tmp = root / f"{TMP_PREFIX}{BEST_FILE}"
    tmp.write_text(json.dumps({"checkpoint": Path(checkpoint).name, "stage": int(stage),
                               "val_loss": float(val_loss), "step": int(step)}))
    _fsync_dir_files(root, only=(tmp.name,))
    os.replace(tmp, root / BEST_FILE)


def is_better(run_dir: str | Path, stage: int, val_loss: float) -> bool:
    """Whether ``val_loss`` of ``stage`` beats ``best`` (a new stage always replaces an older one's)."""
    record = best_record(run_dir)
    return record is None or int(record["stage"]) != int(stage) or val_loss < float(record["val_loss"])


def resolve_checkpoint(run_dir: str | Path, name: str = "latest") -> Path:
    """The checkpoint directory called ``name`` (``latest`` | ``best``) of ``run_dir``."""
    if name not in NAMES:
        raise ValueError(f"unknown checkpoint name {name!r}; one of {NAMES}")
    found = latest_checkpoint(run_dir) if name == "latest" else best_checkpoint(run_dir)
    if found is None:
        raise FileNotFoundError(f"{run_dir} has no {name} checkpoint"
                                + (" (best needs train.val_fraction > 0)" if name == "best" else ""))
    return found


def resolve_checkpoint_spec(spec: str | Path) -> Path:
    """A checkpoint directory, or ``<run_dir>/latest`` / ``<run_dir>/best`` (also under ``checkpoints/``)."""
    path = Path(spec)
    if path.name in NAMES and not path.exists():
        return resolve_checkpoint(run_dir_of(path), path.name)
    if not is_complete(path):
        raise FileNotFoundError(f"{path} is not a complete ldisc checkpoint (no {MARKER} marker)")
    return path


def resolve_resume(resume: str | None, run_dir: str | Path) -> Path | None:
    """``None`` → no resume; ``auto`` → newest complete checkpoint of ``run_dir`` that verifies against
    its checksums (or none; skipped ones are logged); ``latest`` / ``best`` → that checkpoint of
    ``run_dir``; else a checkpoint spec (see above). Named and explicit checkpoints must verify."""
    if resume in (None, "", "none", "null"):
        return None
    if resume == "auto":
        return integrity.newest_verified(list_checkpoints(run_dir))[0]
    if resume in NAMES:
        return integrity.require_verified(resolve_checkpoint(run_dir, resume))
    return integrity.require_verified(resolve_checkpoint_spec(resume))


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
    try:
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
    except (OSError, RuntimeError) as err:     # disk full, quota, I/O error: the previous checkpoint stays
        if isinstance(err, RuntimeError) and not _write_failure(err, root):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        reason = err.strerror if isinstance(err, OSError) and err.strerror else _write_reason(err, root)
        raise CheckpointSaveError(f"checkpoint {final.name} not saved in {root}: {reason}; newest complete "
                                  f"checkpoint: {latest_checkpoint(run_dir) or 'none'}") from err
    if rank == 0:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        prune(run_dir, keep)
    barrier()
    return final, time.perf_counter() - started


def _write_failure(err: RuntimeError, root: Path) -> bool:
    """Whether torch.save's RuntimeError is a failed write (its zip writer does not raise OSError)."""
    text = str(err)
    return "write" in text or "unexpected pos" in text or shutil.disk_usage(root).free < (1 << 20)


def _write_reason(err: Exception, root: Path) -> str:
    free = shutil.disk_usage(root).free
    what = "No space left on device" if free < (1 << 20) else "write failed"
    return f"{what} ({free} bytes free; {' '.join(str(err).split())[-120:]})"


class CheckpointSaveError(OSError):
    """A checkpoint could not be written (e.g. no space left); the partial one is removed, older ones stay."""


def remove_stale_temporaries(run_dir: str | Path) -> None:
    """Delete half-written checkpoints left by a crash during a save."""
    root = checkpoint_root(run_dir)
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(TMP_PREFIX):
                shutil.rmtree(p, ignore_errors=True)


def prune(run_dir: str | Path, keep: int) -> None:
    """Delete all but the newest ``keep`` complete checkpoints, never ``best``."""
    if keep <= 0:
        return
    best = (best_record(run_dir) or {}).get("checkpoint")
    for old in list_checkpoints(run_dir)[:-keep]:
        if old.name != best:
            shutil.rmtree(old, ignore_errors=True)


def _fsync_dir_files(path: Path, only: tuple[str, ...] | None = None) -> None:
    files = [path / n for n in only] if only else path.rglob("*")
    for f in files:
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
