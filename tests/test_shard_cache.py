"""Whole-shard reads of an S3 dataset through a bounded local cache (ldisc.data.shard_cache), against a
real local S3 server (moto): the same batches as ranged GETs, the limit is never exceeded, a corrupt
cached shard is detected and downloaded again, a bad download never becomes visible."""
from __future__ import annotations

import os
import re
import threading
from pathlib import Path

import pytest
import torch

from _data_fixtures import ingest_gray
from _s3_server import local_s3
from ldisc.data import StreamLoader, open_store, read_manifest
from ldisc.data.samples import SampleReader, SampleTable
from ldisc.data.shard_cache import CacheSpec, CachedSampleReader, ShardCache, checksums_of, open_reader
from ldisc.data.store import StoreError
from ldisc.views import ViewConfig

URL = "s3://ldisc-test/cache"
N_IMAGES, PER_SHARD = 24, 4


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with local_s3() as server:
        ingest_gray(tmp_path_factory.mktemp("cache-src"), N_IMAGES, PER_SHARD, dataset=URL)
        yield server


@pytest.fixture()
def manifest(s3):
    return read_manifest(open_store(URL))


def _dir_bytes(path: Path) -> int:
    return sum(e.stat().st_size for e in os.scandir(path) if e.is_file()) if path.exists() else 0


class _Watch:
    """Polls the cache directory's total size in a thread; ``peak`` is the largest size seen."""

    def __init__(self, path: Path):
        self.path, self.peak, self._stop = path, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, _dir_bytes(self.path))
            except FileNotFoundError:
                pass
            self._stop.wait(0.001)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def test_cached_batches_equal_ranged_batches_within_the_limit(s3, manifest, tmp_path):
    shard_bytes = max(checksums_of(manifest).values(), key=lambda e: e[1])[1]
    limit = 3 * (shard_bytes + 256)                  # room for 3 of the 6 shards: eviction must happen
    kw = dict(batch_size=2, seed=5, world_size=1, rank=0, num_workers=2, view_config=ViewConfig(view_side=16))
    s3.meter.reset()
    ranged = list(StreamLoader(URL, **kw))
    ranged_gets = s3.counts["GET ranged"]
    s3.meter.reset()
    cache_dir = tmp_path / "cache"
    loader = StreamLoader(URL, cache_dir=str(cache_dir), cache_limit_gb=limit / 1e9, cache_prefetch=2, **kw)
    with _Watch(cache_dir) as watch:
        cached = list(loader)
    assert len(cached) == len(ranged) == N_IMAGES // 4
    for a, b in zip(cached, ranged):
        assert a["sample_ids"] == b["sample_ids"]
        assert torch.equal(a["x1_1"], b["x1_1"]) and torch.equal(a["mix"], b["mix"])
    assert ranged_gets == N_IMAGES                   # one ranged GET per sample without the cache
    assert s3.counts["GET ranged"] == 0              # whole shards only with it
    stats = loader.shard_cache_stats
    assert stats["downloads"] >= N_IMAGES // PER_SHARD and stats["checksum_failures"] == 0
    assert stats["evictions"] >= 1 and stats["hits"] + stats["misses"] >= N_IMAGES // PER_SHARD
    assert 0 < watch.peak <= limit and _dir_bytes(cache_dir) <= limit


def test_limit_is_kept_shard_by_shard_and_lru_goes_first(s3, manifest, tmp_path):
    sums = checksums_of(manifest)
    keys = sorted(sums)
    limit = 2 * (max(b for _, b in sums.values()) + 256)
    cache = ShardCache(open_store(URL), CacheSpec(str(tmp_path / "c"), limit, 0, sums))
    stale = tmp_path / "c" / f"{sums[keys[4]][0]}.part-99999-crashed"     # a download whose process died
    stale.write_bytes(b"\0" * limit)
    for key in keys[:2]:
        os.close(cache.open(key))
    os.close(cache.open(keys[0]))                    # keys[0] is now the most recently used
    os.close(cache.open(keys[2]))                    # evicts keys[1]
    assert not stale.exists()                        # its shard lock was free: removed, not counted
    cached = {p.stem for p in (tmp_path / "c").glob("*.tar")}
    assert cached == {sums[keys[0]][0], sums[keys[2]][0]}
    for key in keys[3:]:
        os.close(cache.open(key))
        assert cache.used_bytes() <= limit and _dir_bytes(tmp_path / "c") <= limit
    assert cache.take_stats() == {"hits": 1, "misses": len(keys), "downloads": len(keys),
                                  "evictions": len(keys) - 2, "download_bytes": sum(sums[k][1] for k in keys)}
    with pytest.raises(StoreError, match="cache_limit_gb"):
        ShardCache(open_store(URL), CacheSpec(str(tmp_path / "tiny"), 1000, 0, sums)).open(keys[0])


def test_corrupt_cached_shard_is_detected_and_downloaded_again(s3, manifest, tmp_path):
    sums = checksums_of(manifest)
    table = SampleTable.from_manifest(manifest)
    row = 5
    key = table.shard_keys[table.shard_index[row]]
    sha, size = sums[key]
    want = SampleReader(open_store(URL), table).image(row).tobytes()
    cache = ShardCache(open_store(URL), CacheSpec(str(tmp_path / "c"), 10**8, 0, sums))
    path = tmp_path / "c" / f"{sha}.tar"

    def corrupt(keep_mtime: bool):
        st = path.stat()
        with open(path, "r+b") as f:             # the sample's PNG signature: it no longer decodes
            f.seek(int(table.png_offset[row]))
            f.write(b"\0" * 8)
        if keep_mtime:                           # bit rot that the file's metadata does not show
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))

    os.close(cache.open(key))
    assert cache.take_stats() == {"misses": 1, "downloads": 1, "download_bytes": size}
    # changed on disk since it was verified: caught when the shard is opened
    corrupt(keep_mtime=False)
    reader = CachedSampleReader(open_store(URL), table, cache)
    assert reader.image(row).tobytes() == want
    assert cache.take_stats() == {"misses": 1, "downloads": 1, "download_bytes": size, "checksum_failures": 1}
    # unchanged metadata, and the reader already holds the shard open: caught when the sample fails to decode
    corrupt(keep_mtime=True)
    assert reader.image(row).tobytes() == want
    assert cache.take_stats() == {"misses": 1, "downloads": 1, "download_bytes": size, "checksum_failures": 1}
    reader.close()


def test_a_download_that_does_not_match_the_manifest_never_becomes_visible(s3, manifest, tmp_path):
    sums = checksums_of(manifest)
    key = sorted(sums)[0]
    wrong = {key: ("0" * 64, sums[key][1])}
    cache = ShardCache(open_store(URL), CacheSpec(str(tmp_path / "c"), 10**8, 0, wrong))
    with pytest.raises(StoreError, match="sha256"):
        cache.open(key)
    assert cache.take_stats()["checksum_failures"] == 3
    assert [p.name for p in (tmp_path / "c").iterdir() if not p.name.endswith(".lock")] == []


def test_local_datasets_and_no_cache_dir_keep_random_access(s3, manifest, tmp_path):
    table = SampleTable.from_manifest(manifest)
    spec = CacheSpec(str(tmp_path / "c"), 10**8, 2, checksums_of(manifest))
    assert type(open_reader(open_store(URL), table, None, list)) is SampleReader
    assert type(open_reader(open_store(tmp_path), table, spec, list)) is SampleReader
    reader = open_reader(open_store(URL), table, spec, lambda: table.shard_keys[:2])
    assert isinstance(reader, CachedSampleReader)
    reader.close()                               # stops the prefetcher


def test_cache_events_become_prometheus_counters():
    from prometheus_client import generate_latest

    from ldisc.train.metrics import TrainMetrics

    metrics = TrainMetrics(rank=3)
    metrics.observe_shard_cache({"hits": 2, "downloads": 1, "download_bytes": 4096})
    metrics.observe_shard_cache(None)
    text = generate_latest(metrics.registry).decode()
    assert re.search(r'ldisc_train_shard_cache_hits_total\{[^}]*rank="3"[^}]*\} 2\.0', text)
    assert re.search(r'ldisc_train_shard_cache_download_bytes_total\{[^}]*rank="3"[^}]*\} 4096\.0', text)
    assert 'ldisc_train_shard_cache_evictions_total' in text


class _GatedStore:
    """The store, with each shard's byte stream held until ``go`` is set (a download in flight)."""

    def __init__(self, store, streaming: threading.Event, go: threading.Event):
        self.store, self.streaming, self.go = store, streaming, go

    def iter_bytes(self, key):
        self.streaming.set()
        assert self.go.wait(30)
        yield from self.store.iter_bytes(key)

    def __getattr__(self, name):
        return getattr(self.store, name)


def test_a_download_is_published_only_between_reservations(s3, manifest, tmp_path):
    """A reservation counts in-flight .part files and cached .tar files under the directory lock; a
    download publishing (.part → .tar) in the middle of that scan would be counted as neither, and the
    next shard could push the cache past its limit. So publishing waits for the lock."""
    import fcntl
    sums = checksums_of(manifest)
    key = sorted(sums)[0]
    sha = sums[key][0]
    streaming, go = threading.Event(), threading.Event()
    cache = ShardCache(_GatedStore(open_store(URL), streaming, go), CacheSpec(str(tmp_path / "c"), 10**6, 0, sums))
    download = threading.Thread(target=cache.ensure, args=(key,))
    download.start()
    assert streaming.wait(30)                         # reserved, now streaming into its .part
    fd = os.open(tmp_path / "c" / ".cache.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)                    # a reservation of another process is scanning
    go.set()
    download.join(1.0)
    assert download.is_alive() and not (tmp_path / "c" / f"{sha}.tar").exists()
    assert len(list((tmp_path / "c").glob(f"{sha}.part-*"))) == 1
    os.close(fd)                                      # the scan is over
    download.join(30)
    assert not download.is_alive() and (tmp_path / "c" / f"{sha}.tar").exists()
    assert not list((tmp_path / "c").glob(f"{sha}.part-*"))
