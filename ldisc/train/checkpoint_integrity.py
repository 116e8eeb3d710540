"""Checksums of checkpoint directories: a manifest written last, verified before anything is loaded.

``SHA256SUMS.json`` maps every file of a checkpoint directory (relative path) to its size and SHA-256.
:func:`write_manifest` runs after all other files are written and flushed, writes the manifest to a
temporary name, fsyncs and renames it (atomic); :func:`verify` re-hashes and reports every file that is
missing, unlisted, of the wrong size or of the wrong digest, so that a flipped byte in the optimizer
state or a truncated file is found before DeepSpeed or torch reads it. ``train.resume=auto`` uses
:func:`newest_verified` to fall back past checkpoints that fail, saying which it skipped and why.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

MANIFEST = "SHA256SUMS.json"
# Folders derived from a complete checkpoint after its manifest (ldisc.train.reshard's universal
# checkpoint and its temporary): rebuilt from the verified files, so neither listed nor checked.
DERIVED_DIRS = ("universal", ".tmp-universal")
FORMAT = "ldisc-checkpoint-sha256/1"
_CHUNK = 1 << 20
log = logging.getLogger(__name__)


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST
                  and not p.name.startswith(".tmp-")
                  and p.relative_to(directory).parts[0] not in DERIVED_DIRS)


def write_manifest(directory: str | Path) -> Path:
    """Hash every file under ``directory`` into ``SHA256SUMS.json`` (atomically; call after all other files)."""
    directory = Path(directory)
    files = {p.relative_to(directory).as_posix(): {"bytes": p.stat().st_size, "sha256": _digest(p)}
             for p in _files(directory)}
    tmp = directory / f".tmp-{MANIFEST}"
    with open(tmp, "w") as fh:
        json.dump({"format": FORMAT, "files": files}, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    final = directory / MANIFEST
    os.replace(tmp, final)
    return final


def verify(directory: str | Path) -> list[str]:
    """Problems of checkpoint ``directory`` against its manifest; empty when every byte checks out."""
    directory = Path(directory)
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
        listed = manifest["files"]
        if manifest.get("format") != FORMAT:
            return [f"{MANIFEST}: unknown format {manifest.get('format')!r}"]
    except FileNotFoundError:
        return [f"no {MANIFEST} (not written by this version of ldisc, or the save did not finish)"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return [f"{MANIFEST} unreadable: {err}"]
    problems = []
    present = {p.relative_to(directory).as_posix(): p for p in _files(directory)}
    for name in sorted(set(listed) - set(present)):
        problems.append(f"{name}: missing")
    for name in sorted(set(present) - set(listed)):
        problems.append(f"{name}: not in {MANIFEST}")
    for name in sorted(set(listed) & set(present)):
        size = present[name].stat().st_size
        if size != listed[name]["bytes"]:
            problems.append(f"{name}: {size} bytes, {listed[name]['bytes']} expected (truncated or overwritten)")
        elif _digest(present[name]) != listed[name]["sha256"]:
            problems.append(f"{name}: SHA-256 mismatch (corrupted)")
    return problems


def require_verified(directory: str | Path) -> Path:
    """``directory`` if it verifies, else ValueError naming the first problems."""
    problems = verify(directory)
    if problems:
        raise ValueError(f"checkpoint {directory} fails verification: {'; '.join(problems[:3])}"
                         f"{f' (+{len(problems) - 3} more)' if len(problems) > 3 else ''}")
    return Path(directory)


def newest_verified(candidates: list[Path]) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest of ``candidates`` (oldest first) that verifies, and the (path, reason) of those skipped."""
    skipped = []
    for path in reversed(candidates):
        problems = verify(path)
        if not problems:
            return path, skipped
        reason = "; ".join(problems[:3])
        log.warning("resume: skipping checkpoint %s: %s", path, reason)
        skipped.append((path, reason))
    return None, skipped
