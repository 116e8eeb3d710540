"""Whole shards of a remote dataset in a bounded local cache (``data.cache_dir``, ``data.cache_limit_gb``).

Without a cache every sample read from ``s3://`` is one ranged GET: at hundreds of ranks a request storm,
and a round trip of latency per sample. With ``data.cache_dir`` set, a loader worker reads whole shards
instead, as MosaicML streaming does:

- each worker knows the shards its steps will read, in the order the epoch plan gives them
  (:func:`upcoming_shards`); a background thread downloads the next ``data.cache_prefetch`` of them
  ahead of use, one streamed GET per shard;
- a download is verified against the manifest's ``sha256`` and ``bytes`` of the shard before it
  becomes visible (written to a ``.part`` file, renamed when it checks out; up to 3 attempts);
- files are content-addressed (``<sha256>.tar``): ranks and workers of one node may share the
  directory, and two datasets holding the same shard share its copy;
- the cache never holds more than ``data.cache_limit_gb``: space is reserved (the ``.part`` file is
  created at the shard's full size) before a download starts, after evicting the least recently used
  shards (a sidecar ``<sha256>.ok`` whose mtime is the last use). File locks (``fcntl.flock``) make
  this safe between processes: a shard being opened or downloaded is never evicted;
- a cached shard whose file changed since it was verified (the sidecar records size, mtime and inode)
  is checked again; one that fails the checksum, or whose sample fails to decode and then fails the
  checksum, is deleted and downloaded again.

A shard evicted while a reader still has it open keeps its disk blocks until the reader closes it
(``SampleReader`` keeps at most 16 open). Random access (``LocalStore``, or no ``cache_dir``) reads
samples in place as before: the ranged-GET path stays.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import threading
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from . import order as order_mod
from .samples import SampleReader, SampleTable
from .store import Store, StoreError

log = logging.getLogger(__name__)

# event → help text of its Prometheus counter (ldisc.train.metrics: ldisc_train_shard_cache_<event>_total)
CACHE_EVENTS = {
    "hits": "Shard opens served from the local shard cache",
    "misses": "Shard opens that had to wait for a download",
    "downloads": "Whole-shard downloads into the local shard cache (prefetched or on a miss)",
    "evictions": "Shards evicted from the local shard cache (least recently used first)",
    "checksum_failures": "Downloaded or cached shards that did not match the manifest's sha256",
    "download_bytes": "Bytes downloaded into the local shard cache",
}
SIDECAR_BYTES = 256          # space accounted per shard for its sidecar (the sidecar itself is < 100 bytes)
DOWNLOAD_ATTEMPTS = 3


@dataclass
class CacheSpec:
    """What a worker needs to build its :class:`ShardCache` (picklable, goes to DataLoader workers)."""

    directory: str
    limit_bytes: int
    prefetch: int = 2
    checksums: dict[str, tuple[str, int]] = field(default_factory=dict)   # shard key → (sha256, bytes)
    wait_s: float = 300.0    # how long a download waits for space held by shards in use elsewhere


def checksums_of(manifest) -> dict[str, tuple[str, int]]:
    """Shard key → (sha256, bytes) from a manifest's shard table (written by ``sharding.ingest``)."""
    t = manifest.shards
    return {k: (s, int(b)) for k, s, b in zip(t.column("shard").to_pylist(), t.column("sha256").to_pylist(),
                                               t.column("bytes").to_pylist())}


def upcoming_shards(table: SampleTable, plan, steps) -> list[str]:
    """The shard keys the given steps of ``plan`` read, in first-use order."""
    keys: dict[str, None] = {}
    for step in steps:
        positions = order_mod.rank_step_positions(plan.start, step, plan.world_size, plan.rank, plan.per_rank)
        for row in plan.order[positions]:
            keys.setdefault(table.shard_keys[table.shard_index[int(row)]], None)
    return list(keys)


@contextmanager
def _flock(path: Path, blocking: bool = True):
    """An exclusive lock on ``path`` (created if missing); yields whether it was taken."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            taken = True
        except BlockingIOError:
            taken = False
        yield taken
    finally:
        os.close(fd)


def _sha256_fd(fd: int) -> str:
    h, offset = hashlib.sha256(), 0
    while data := os.pread(fd, 1 << 22, offset):
        h.update(data)
        offset += len(data)
    return h.hexdigest()


def _touch(path: Path) -> None:
    """Set ``path``'s mtime to now, to the nanosecond (a plain utime takes the kernel's coarse clock, which
    gives several uses in a row the same time)."""
    now = time.time_ns()
    os.utime(path, ns=(now, now))


def _stamp(st: os.stat_result) -> str:
    return f"{st.st_size} {st.st_mtime_ns} {st.st_ino}"


class ShardCache:
    """One process's view of a shared shard cache directory (see the module doc)."""

    def __init__(self, store: Store, spec: CacheSpec):
        self.store, self.spec = store, spec
        self.dir = Path(spec.directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._stats: Counter = Counter()
        self._stats_lock = threading.Lock()
        self._plan: dict[str, int] = {}
        self._cursor = -1
        self._cv = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- files ----------------------------------------------------------------------------------
    def _tar(self, sha: str) -> Path:
        return self.dir / f"{sha}.tar"

    def _side(self, sha: str) -> Path:
        return self.dir / f"{sha}.ok"

    def _lock(self, sha: str) -> Path:
        return self.dir / f"{sha}.lock"

    def _entry(self, key: str) -> tuple[str, int]:
        try:
            return self.spec.checksums[key]
        except KeyError:
            raise StoreError(f"shard {key} is not in the manifest: no checksum to verify a download against") from None

    def _count(self, **events: int) -> None:
        with self._stats_lock:
            self._stats.update(events)

    def take_stats(self) -> dict[str, int]:
        """Events (:data:`CACHE_EVENTS`) since the last call."""
        with self._stats_lock:
            out = {k: int(v) for k, v in self._stats.items() if v}
            self._stats.clear()
        return out

    def used_bytes(self) -> int:
        """Bytes the cache accounts for: shards, downloads in flight, a sidecar allowance per shard."""
        return self._scan()[0]

    # -- reading --------------------------------------------------------------------------------
    def open(self, key: str) -> int:
        """A read-only descriptor of the whole shard ``key``, downloaded first on a miss."""
        self._advance(key)
        sha, size = self._entry(key)
        with _flock(self._lock(sha)):
            fd = self._open_valid(sha, size)
            if fd is not None:
                self._count(hits=1)
                return fd
            self._count(misses=1)
            self._download(key, sha, size)
            fd = self._open_valid(sha, size)
        if fd is None:
            raise StoreError(f"shard {key}: downloaded copy vanished from {self.dir}")
        return fd

    def ensure(self, key: str) -> None:
        """Download ``key`` unless it is cached (the prefetcher's call)."""
        sha, size = self._entry(key)
        with _flock(self._lock(sha)):
            fd = self._open_valid(sha, size)
            if fd is None:
                self._download(key, sha, size)
            else:
                os.close(fd)

    def discard_if_corrupt(self, key: str, fd: int) -> bool:
        """After a sample of ``key`` failed to decode: True (and the cached copy deleted) when the bytes
        behind ``fd`` do not match the manifest's checksum."""
        sha, size = self._entry(key)
        if os.fstat(fd).st_size == size and _sha256_fd(fd) == sha:
            return False
        self._count(checksum_failures=1)
        with _flock(self._lock(sha)):
            try:
                if os.stat(self._tar(sha)).st_ino == os.fstat(fd).st_ino:
                    self._delete(sha)
            except FileNotFoundError:
                pass
        log.warning("cached shard %s (%s) failed its checksum: deleted, it will be downloaded again", key, sha[:12])
        return True

    def _open_valid(self, sha: str, size: int) -> int | None:
        """Descriptor of the cached, verified copy (call with the shard's lock held), else None."""
        try:
            fd = os.open(self._tar(sha), os.O_RDONLY)
        except FileNotFoundError:
            return None
        stamp = _stamp(os.fstat(fd))
        side = self._side(sha)
        try:
            known = side.read_text()
        except FileNotFoundError:
            known = ""
        if known != stamp:                    # new to this cache, or changed since verified
            if os.fstat(fd).st_size != size or _sha256_fd(fd) != sha:
                os.close(fd)
                self._delete(sha)
                self._count(checksum_failures=1)
                log.warning("cached shard %s failed its checksum: downloading it again", sha[:12])
                return None
            side.write_text(stamp)
        _touch(side)                          # last use, for LRU eviction
        return fd

    def _delete(self, sha: str) -> None:
        self._tar(sha).unlink(missing_ok=True)
        self._side(sha).unlink(missing_ok=True)

    # -- downloading ----------------------------------------------------------------------------
    def _download(self, key: str, sha: str, size: int) -> None:
        """Fetch, verify and publish ``key`` (call with the shard's lock held)."""
        for attempt in range(DOWNLOAD_ATTEMPTS):
            part = self._reserve(sha, size)
            try:
                h, n = hashlib.sha256(), 0
                with open(part, "r+b") as f:
                    for chunk in self.store.iter_bytes(key):
                        n += len(chunk)
                        if n > size:          # never write past the reserved space
                            break
                        h.update(chunk)
                        f.write(chunk)
                self._count(downloads=1, download_bytes=min(n, size))
                if n == size and h.hexdigest() == sha:
                    # under the reservation lock: a reservation scanning the directory must see this shard
                    # either as its .part or as its .tar — seen as a .part and published before its lock was
                    # tested, it was counted as neither, and the cache could pass its limit by a shard
                    with _flock(self.dir / ".cache.lock"):
                        os.replace(part, self._tar(sha))
                    self._side(sha).write_text(_stamp(os.stat(self._tar(sha))))
                    _touch(self._side(sha))
                    return
                self._count(checksum_failures=1)
                log.warning("download %d of shard %s does not match the manifest (%d of %d bytes, sha256)",
                            attempt + 1, key, n, size)
            finally:
                part.unlink(missing_ok=True)
        raise StoreError(f"shard {key}: {DOWNLOAD_ATTEMPTS} downloads did not match the manifest's sha256 "
                         f"{sha[:12]}…; run `ldisc-shard verify` on the dataset")

    def _scan(self, own: str | None = None) -> tuple[int, list[tuple[float, str, int]]]:
        """(accounted bytes, cached shards as (last use, sha, bytes) oldest first); removes ``.part`` files
        nobody is writing (a crashed download: its shard lock is free, or it is ``own``, held by us)."""
        used, shards = 0, []
        for entry in os.scandir(self.dir):
            name = entry.name
            try:
                if name.endswith(".tar"):
                    sha = name[:-4]
                    try:
                        last = os.stat(self._side(sha)).st_mtime
                    except FileNotFoundError:
                        last = entry.stat().st_mtime
                    size = entry.stat().st_size
                    shards.append((last, sha, size))
                    used += size + SIDECAR_BYTES
                elif ".part-" in name:
                    sha = name.split(".part-")[0]
                    if sha == own:
                        os.unlink(entry.path)
                        continue
                    with _flock(self._lock(sha), blocking=False) as free:
                        if free:
                            os.unlink(entry.path)
                            continue
                    used += entry.stat().st_size + SIDECAR_BYTES
            except FileNotFoundError:         # removed by another process meanwhile
                continue
        return used, sorted(shards)

    def _reserve(self, sha: str, size: int) -> Path:
        """A ``.part`` file of ``size`` bytes, after evicting least recently used shards to make room."""
        need, limit = size + SIDECAR_BYTES, self.spec.limit_bytes
        if need > limit:
            raise StoreError(f"a shard of {size / 1e9:.3f} GB does not fit in data.cache_limit_gb="
                             f"{limit / 1e9:.3f}; raise the limit")
        deadline = time.monotonic() + self.spec.wait_s
        while True:
            with _flock(self.dir / ".cache.lock"):
                used, shards = self._scan(own=sha)
                for _, victim, victim_size in shards:
                    if used + need <= limit:
                        break
                    if victim == sha:
                        continue
                    with _flock(self._lock(victim), blocking=False) as free:
                        if free:
                            self._delete(victim)
                            used -= victim_size + SIDECAR_BYTES
                            self._count(evictions=1)
                if used + need <= limit:
                    part = self.dir / f"{sha}.part-{os.getpid()}-{uuid.uuid4().hex[:8]}"
                    with open(part, "wb") as f:
                        f.truncate(size)
                    return part
            if time.monotonic() > deadline:
                raise StoreError(f"shard cache {self.dir} stayed full for {self.spec.wait_s:.0f} s (shards in use "
                                 f"by other processes); raise data.cache_limit_gb or lower data.cache_prefetch")
            time.sleep(0.05)

    # -- prefetching ----------------------------------------------------------------------------
    def prefetch(self, keys: list[str]) -> None:
        """Download ``keys`` in this order in the background, at most ``spec.prefetch`` shards ahead of the
        last one :meth:`open` was asked for."""
        self._plan = {k: i for i, k in enumerate(dict.fromkeys(keys))}
        if self.spec.prefetch > 0 and self._plan:
            self._thread = threading.Thread(target=self._prefetch_loop, name="ldisc-shard-prefetch", daemon=True)
            self._thread.start()

    def _advance(self, key: str) -> None:
        i = self._plan.get(key)
        if i is not None and i > self._cursor:
            with self._cv:
                self._cursor = i
                self._cv.notify_all()

    def _prefetch_loop(self) -> None:
        for key, i in self._plan.items():
            with self._cv:
                while not self._stop.is_set() and i > self._cursor + self.spec.prefetch:
                    self._cv.wait(0.5)
            if self._stop.is_set():
                return
            try:
                self.ensure(key)
            except Exception as err:          # the reader downloads it in the foreground (and reports)
                log.warning("prefetch of shard %s failed: %s", key, err)

    def close(self) -> None:
        self._stop.set()
        with self._cv:
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)


class CachedSampleReader(SampleReader):
    """A :class:`SampleReader` that reads whole cached shards (:class:`ShardCache`) of a remote store."""

    def __init__(self, store: Store, table: SampleTable, cache: ShardCache):
        super().__init__(store, table)
        self.cache = cache

    def _open_fd(self, key: str) -> int:
        return self.cache.open(key)

    def image(self, row: int):
        try:
            return super().image(row)
        except Exception:
            key = self.table.shard_keys[self.table.shard_index[row]]
            fd = self._fds.get(key)
            if fd is None or not self.cache.discard_if_corrupt(key, fd):
                raise
            os.close(self._fds.pop(key))
            return super().image(row)        # from a fresh download

    def close(self) -> None:
        self.cache.close()
        super().close()


def open_reader(store: Store, table: SampleTable, spec: CacheSpec | None, upcoming) -> SampleReader:
    """A :class:`CachedSampleReader` prefetching ``upcoming()`` (shard keys in order) when ``spec`` is set
    and the store is remote; otherwise the plain (local file or ranged-GET) :class:`SampleReader`."""
    if spec is None or not table.shard_keys or store.local_path(table.shard_keys[0]) is not None:
        return SampleReader(store, table)
    cache = ShardCache(store, spec)
    cache.prefetch(upcoming())
    return CachedSampleReader(store, table, cache)
