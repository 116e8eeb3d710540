"""What a killed ingest leaves behind, found and removed by the next one, reported by ``ldisc-shard verify``.

- temporary files ``.tmp-<pid>-…`` of the store's atomic writes (shards, manifest files) whose process is gone;
- manifest Parquet files no committed version references (written by a commit that never happened);
- spool folders ``ldisc-ingest-*`` in the staging/temp directory whose owner (``owner.pid``) is gone.

Removal of manifest files takes the dataset's ingest lock (local datasets), so a live commit is never
touched; on S3 leftovers are only reported.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from ldisc.data.manifest import list_versions, version_key
from ldisc.data.store import LocalStore, Store

SPOOL_PREFIX = "ldisc-ingest-"
OWNER_FILE = "owner.pid"
_GRACE_S = 60          # a spool younger than this may not have written its owner file yet


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _tmp_pid(name: str) -> int | None:
    parts = name.split("-")
    return int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else None


def stale_temporaries(store: Store) -> list[Path]:
    if not isinstance(store, LocalStore) or not store.root.is_dir():
        return []
    return sorted(p for p in store.root.rglob(".tmp-*")
                  if p.is_file() and (pid := _tmp_pid(p.name)) is not None and not _alive(pid))


def orphan_manifest_files(store: Store) -> list[str]:
    referenced = set()
    for v in list_versions(store):
        info = json.loads(store.get_bytes(version_key(v)))
        referenced |= {info.get("shards_file"), info.get("samples_file")}
    return sorted(k for k in store.list("manifest/data/") if k.endswith(".parquet") and k not in referenced)


def stale_spools(staging_dir: str | None = None) -> list[Path]:
    base = Path(staging_dir or tempfile.gettempdir())
    found = []
    for p in base.glob(f"{SPOOL_PREFIX}*") if base.is_dir() else []:
        owner = p / OWNER_FILE
        try:
            pid = int(owner.read_text())
        except (OSError, ValueError):
            pid = None
        if p.is_dir() and (not _alive(pid) if pid else time.time() - p.stat().st_mtime > _GRACE_S):
            found.append(p)
    return sorted(found)


def find(store: Store, staging_dir: str | None = None) -> dict[str, list[str]]:
    return {"temporary_files": [str(p) for p in stale_temporaries(store)],
            "orphan_manifest_files": orphan_manifest_files(store),
            "stale_spools": [str(p) for p in stale_spools(staging_dir)]}


def clean(store: Store, staging_dir: str | None = None) -> dict[str, int]:
    """Remove the leftovers (call with the dataset's ingest lock held); → counts removed."""
    found = find(store, staging_dir)
    for path in found["temporary_files"]:
        Path(path).unlink(missing_ok=True)
    for path in found["stale_spools"]:
        shutil.rmtree(path, ignore_errors=True)
    if isinstance(store, LocalStore):
        for key in found["orphan_manifest_files"]:
            store.delete(key)
    else:
        found["orphan_manifest_files"] = []
    return {k: len(v) for k, v in found.items()}
