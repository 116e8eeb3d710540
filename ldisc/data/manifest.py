"""Versioned, append-only dataset manifest (Parquet tables + one commit object per version).

Layout under a dataset root (local directory or S3 prefix)::

    shards/<site>/<modality>/<content-hash>.tar     WebDataset shards (<id>.png + <id>.json)
    manifest/v00000007.json                          commit object of version 7 (tiny JSON)
    manifest/data/v00000007-<token>.shards.parquet   one row per shard (cumulative)
    manifest/data/v00000007-<token>.samples.parquet  one row per sample (cumulative index)

A version exists once its commit object exists. Commit objects are created with an
exclusive put (``put_if_absent``) *after* the Parquet files they reference are complete,
so a crash never exposes a half-written version, two writers can never both create the
same version (the loser re-reads the new latest version and retries: optimistic
concurrency), and every earlier version stays readable. Each version is complete on its
own (cumulative tables): reading version N never needs versions < N.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from .store import Store, StoreError

FORMAT = "ldisc-manifest/1"
_VERSION_KEY = re.compile(r"^manifest/v(\d{8})\.json$")

SHARD_SCHEMA = pa.schema([
    ("shard", pa.string()), ("samples", pa.int64()), ("bytes", pa.int64()),
    ("sha256", pa.string()), ("site", pa.string()), ("modality", pa.string()),
    ("created", pa.timestamp("ms", tz="UTC")), ("version_added", pa.int64()),
])
SAMPLE_SCHEMA = pa.schema([
    ("sample_id", pa.string()), ("shard", pa.string()), ("index", pa.int32()),
    ("png_offset", pa.int64()), ("png_size", pa.int64()),
    ("json_offset", pa.int64()), ("json_size", pa.int64()),
    ("site", pa.string()), ("modality", pa.string()), ("patient_key", pa.string()),
    ("source_format", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
])


class ConflictError(RuntimeError):
    """Another writer committed the version this writer wanted, too many times in a row."""


def version_key(version: int) -> str:
    return f"manifest/v{version:08d}.json"


@dataclass
class Manifest:
    """One committed version: shard table, per-sample index, commit info."""

    version: int
    shards: pa.Table = field(default_factory=SHARD_SCHEMA.empty_table)
    samples: pa.Table = field(default_factory=SAMPLE_SCHEMA.empty_table)
    info: dict = field(default_factory=dict)

    @property
    def num_samples(self) -> int:
        return self.samples.num_rows

    def sample_ids(self) -> set[str]:
        return set(self.samples.column("sample_id").to_pylist())


def list_versions(store: Store) -> list[int]:
    """All committed versions, ascending."""
    out = []
    for key in store.list("manifest/"):
        m = _VERSION_KEY.match(key)
        if m:
            out.append(int(m.group(1)))
    return sorted(out)


def latest_version(store: Store) -> int:
    """The newest committed version, 0 for an empty dataset."""
    versions = list_versions(store)
    return versions[-1] if versions else 0


def _read_table(store: Store, key: str, sha: str, schema: pa.Schema) -> pa.Table:
    data = store.get_bytes(key)
    if hashlib.sha256(data).hexdigest() != sha:
        raise StoreError(f"manifest file {key} does not match its commit checksum")
    # ParquetFile.read without threads starts no Arrow thread pool (pq.read_table goes through the
    # datasets scanner, which starts one whatever use_threads says). Pool threads still alive at
    # interpreter exit aborted ~1 % of `ldisc-shard stats/verify` runs with "terminate called without
    # an active exception" (rc 134); see tests/test_shard_exit.py. Manifest tables are small.
    return pq.ParquetFile(pa.BufferReader(data)).read(use_threads=False).cast(schema)


def read_manifest(store: Store, version: int | str = "latest") -> Manifest:
    """Read a committed version (an int, or 'latest'); version 0 is the empty dataset."""
    if version == "latest":
        version = latest_version(store)
    version = int(version)
    if version == 0:
        return Manifest(0)
    info = json.loads(store.get_bytes(version_key(version)))
    if info.get("format") != FORMAT:
        raise StoreError(f"{version_key(version)}: unknown manifest format {info.get('format')!r}")
    shards = _read_table(store, info["shards_file"], info["shards_sha256"], SHARD_SCHEMA)
    samples = _read_table(store, info["samples_file"], info["samples_sha256"], SAMPLE_SCHEMA)
    return Manifest(version, shards, samples, info)


def _parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


Builder = Callable[[Manifest], "tuple[pa.Table, pa.Table, dict] | None"]


def commit_version(store: Store, build: Builder, max_attempts: int = 20) -> Manifest:
    """Append a version built from the latest one, retrying when another writer wins.

    ``build(parent)`` returns the new cumulative (shards, samples) tables and a dict of
    extra commit info, or None when it has nothing to add (then no version is written and
    the parent is returned); it must be idempotent because it runs again after a conflict.
    """
    for attempt in range(max_attempts):
        parent = read_manifest(store, "latest")
        built = build(parent)
        if built is None:
            return parent
        shards, samples, extra = built
        shards, samples = shards.cast(SHARD_SCHEMA), samples.cast(SAMPLE_SCHEMA)
        version = parent.version + 1
        token = uuid.uuid4().hex[:12]
        files = {}
        for name, table in (("shards", shards), ("samples", samples)):
            key = f"manifest/data/v{version:08d}-{token}.{name}.parquet"
            data = _parquet_bytes(table)
            store.put_bytes(key, data)
            files[f"{name}_file"] = key
            files[f"{name}_sha256"] = hashlib.sha256(data).hexdigest()
        info = {
            "format": FORMAT, "version": version, "parent": parent.version,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "num_shards": shards.num_rows, "num_samples": samples.num_rows, **files, **extra,
        }
        if store.put_if_absent(version_key(version), json.dumps(info, indent=1, sort_keys=True).encode()):
            return Manifest(version, shards, samples, info)
        for name in ("shards", "samples"):  # lost the race: drop our unreferenced files
            store.delete(files[f"{name}_file"])
        time.sleep(min(0.05 * 2**attempt, 1.0))
    raise ConflictError(f"could not commit a manifest version after {max_attempts} attempts")
