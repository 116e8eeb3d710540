"""Ingest a folder of hospital images into a dataset: the orchestration.

Phase 1 (parallel, no lock): every source file is decoded, de-identified and
preprocessed in a process pool, in sorted path order; good samples are spooled to a
local temp file, duplicates within the run dropped, bad ones quarantined.

Phase 2 (commit, see :func:`ldisc.data.manifest.commit_version`): against the latest
manifest version, samples already in the dataset are dropped (dedup across ingests),
the rest are packed in order into shards named by their content hash and uploaded, then
a new manifest version is committed with an exclusive put. On a local dataset a lock
file serialises phase 2 of concurrent ingests; on S3 the exclusive put alone decides and
the loser rebuilds against the winner's version. Because shard names and bytes depend
only on (inputs, options, parent version), a rerun of an interrupted ingest writes the
same shards and the same manifest rows as an uninterrupted run.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
import tempfile
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
from filelock import FileLock
from tqdm import tqdm

from ldisc.data.manifest import Manifest, commit_version
from ldisc.data.store import LocalStore, Store, open_store

from . import leftovers
from .discover import discover
from .metrics import IngestMetrics
from .tarshard import build_shard
from .worker import Processed, Rejected, WorkerOptions, init_worker, process

_SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass
class IngestOptions:
    """What ``ldisc-shard ingest`` is asked to do."""

    source: str
    dataset: str
    site: str
    modality: str
    workers: int = 1
    stored_side: int = 512
    max_pixels: int = 100_000_000
    shard_samples: int = 1000
    shard_bytes: int = 256 << 20
    non_dicom_patient: str = "file"
    files_from: str | None = None
    quarantine_report: str | None = None
    staging_dir: str | None = None
    progress: bool = True


@dataclass
class IngestResult:
    """What an ingest did (also printed and exported as metrics)."""

    version: int
    inputs: int = 0
    added: int = 0
    duplicates: int = 0
    quarantined: dict = field(default_factory=dict)
    source_bytes: int = 0
    shard_bytes: int = 0
    shards_written: int = 0
    seconds: float = 0.0
    report: str = ""               # the quarantine report (names source files: may hold identifiers)
    cleaned: dict = field(default_factory=dict)   # leftovers of killed ingests removed first, by kind


@dataclass
class _Spooled:
    sample_id: str
    png: tuple[int, int]
    json: tuple[int, int]
    meta: Processed


class _Spool:
    """Append-only local file holding phase-1 output until it is packed into shards."""

    def __init__(self, path: Path):
        self.path = path
        self.file = open(path, "w+b")

    def add(self, data: bytes) -> tuple[int, int]:
        offset = self.file.seek(0, os.SEEK_END)
        self.file.write(data)
        return offset, len(data)

    def read(self, span: tuple[int, int]) -> bytes:
        self.file.flush()
        return os.pread(self.file.fileno(), span[1], span[0])

    def close(self) -> None:
        self.file.close()


def _chunks(items: list[_Spooled], max_samples: int, max_bytes: int) -> list[list[_Spooled]]:
    out, current, size = [], [], 0
    for item in items:
        nbytes = item.png[1] + item.json[1] + 1536
        if current and (len(current) >= max_samples or size + nbytes > max_bytes):
            out.append(current)
            current, size = [], 0
        current.append(item)
        size += nbytes
    if current:
        out.append(current)
    return out


def _process_all(opts: IngestOptions, secret: bytes, metrics: IngestMetrics, spool: _Spool,
                 result: IngestResult, report) -> list[_Spooled]:
    """Phase 1: run the pool over all sources; spool good samples, report bad ones."""
    sources = discover(opts.source, opts.files_from)
    result.inputs = len(sources)
    wopts = WorkerOptions(opts.site, opts.modality, opts.stored_side, opts.max_pixels, opts.non_dicom_patient)
    pool = None
    if opts.workers > 1:
        pool = mp.get_context("spawn").Pool(opts.workers, init_worker, (secret, wopts))
        results = pool.imap(process, sources, chunksize=1)
    else:
        init_worker(secret, wopts)
        results = map(process, sources)
    spooled, seen = [], set()
    start = time.perf_counter()
    bar = tqdm(total=len(sources), unit="img", disable=not opts.progress, desc=f"ingest {opts.site}")
    try:
        for item in results:
            bar.update(1)
            result.source_bytes += item.source_bytes
            metrics.observe_input(item.seconds, item.source_bytes)
            if isinstance(item, Rejected):
                result.quarantined[item.reason] = result.quarantined.get(item.reason, 0) + 1
                metrics.quarantine(item.reason)
                report.write(json.dumps({"path": item.rel, "reason": item.reason, "detail": item.detail}) + "\n")
            elif item.sample_id in seen:
                result.duplicates += 1
                metrics.duplicate()
            else:
                seen.add(item.sample_id)
                png, js = spool.add(item.png), spool.add(item.json)
                item.png = item.json = b""  # keep only the metadata in memory
                spooled.append(_Spooled(item.sample_id, png, js, item))
            elapsed = max(time.perf_counter() - start, 1e-9)
            bar.set_postfix(mb_s=f"{result.source_bytes / elapsed / 1e6:.1f}", refresh=False)
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
    return spooled


def _builder(store: Store, opts: IngestOptions, spool: _Spool, spooled: list[_Spooled], state: dict):
    """The idempotent 'new version from parent' function handed to commit_version."""

    def build(parent: Manifest):
        existing = parent.sample_ids()
        new = [s for s in spooled if s.sample_id not in existing]
        state.update(added=len(new), dup_existing=len(spooled) - len(new), shard_bytes=0, shards=0)
        if not new:
            return None
        created = pa.scalar(int(time.time() * 1000), pa.timestamp("ms", tz="UTC"))
        shard_rows, sample_rows = [], []
        for chunk in _chunks(new, opts.shard_samples, opts.shard_bytes):
            data, spans, sha = build_shard([(s.sample_id, spool.read(s.png), spool.read(s.json)) for s in chunk])
            key = f"shards/{opts.site}/{opts.modality}/{sha[:32]}.tar"
            store.put_bytes(key, data)
            state["shard_bytes"] += len(data)
            state["shards"] += 1
            shard_rows.append({"shard": key, "samples": len(chunk), "bytes": len(data), "sha256": sha,
                               "site": opts.site, "modality": opts.modality, "created": created.as_py(),
                               "version_added": parent.version + 1})
            for s, span in zip(chunk, spans):
                m = s.meta
                sample_rows.append({
                    "sample_id": s.sample_id, "shard": key, "index": span.index,
                    "png_offset": span.png_offset, "png_size": span.png_size,
                    "json_offset": span.json_offset, "json_size": span.json_size,
                    "site": opts.site, "modality": opts.modality, "patient_key": m.patient_key,
                    "source_format": m.source_format, "width": m.width, "height": m.height})
        shards = pa.concat_tables([parent.shards, pa.Table.from_pylist(shard_rows, parent.shards.schema)])
        samples = pa.concat_tables([parent.samples, pa.Table.from_pylist(sample_rows, parent.samples.schema)])
        info = {"ingest": {"site": opts.site, "modality": opts.modality, "added": len(new),
                           "size": opts.stored_side, "duplicates": state["dup_existing"] + state["dup_run"],
                           "quarantined": state["quarantined"]}}
        return shards, samples, info

    return build


PRIVATE_DIR = ".ldisc-private"


def quarantine_report_path(opts: IngestOptions, store) -> Path:
    """Where the quarantine report goes: ``--quarantine-report``, else a private (0700) folder of the dataset's
    work area — ``<dataset>/.ldisc-private/`` for a local dataset, ``<staging dir or ~/.cache/ldisc>/
    .ldisc-private/`` for S3 — never the current directory. The report names source files, whose names
    can carry identifiers: it is created 0600 (docs/security.md)."""
    if opts.quarantine_report:
        return Path(opts.quarantine_report)
    base = store.root if isinstance(store, LocalStore) else Path(opts.staging_dir or Path.home() / ".cache" / "ldisc")
    private = base / PRIVATE_DIR
    private.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(private, 0o700)
    return private / f"quarantine-{opts.site}-{opts.modality}-{time.strftime('%Y%m%dT%H%M%S')}.jsonl"


def ingest(opts: IngestOptions, secret: bytes, metrics: IngestMetrics | None = None) -> IngestResult:
    """Run one ingest; returns its result. Bad inputs never stop it."""
    if not _SITE_NAME.match(opts.site):
        raise ValueError(f"site name {opts.site!r}: use letters, digits, '_', '-', '.'")
    if opts.modality not in ("fundus", "xray"):
        raise ValueError(f"modality {opts.modality!r}: fundus or xray")
    metrics = metrics or IngestMetrics()
    metrics.bind(opts.site, opts.modality, opts.dataset)
    store = open_store(opts.dataset)
    if isinstance(store, LocalStore):
        store.root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    result = IngestResult(version=0)
    report_path = quarantine_report_path(opts, store)
    result.report = str(report_path)
    lock = FileLock(str(store.root / ".ingest.lock")) if isinstance(store, LocalStore) else nullcontext()
    with lock:          # what killed ingests left behind (never a live writer's files: see leftovers)
        result.cleaned = leftovers.clean(store, opts.staging_dir)
    with tempfile.TemporaryDirectory(prefix=leftovers.SPOOL_PREFIX, dir=opts.staging_dir) as tmp, \
            os.fdopen(os.open(report_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as report:
        (Path(tmp) / leftovers.OWNER_FILE).write_text(str(os.getpid()))
        spool = _Spool(Path(tmp) / "spool.bin")
        spooled = _process_all(opts, secret, metrics, spool, result, report)
        state = {"dup_run": result.duplicates, "quarantined": dict(sorted(result.quarantined.items()))}
        if spooled:
            with lock:
                manifest = commit_version(store, _builder(store, opts, spool, spooled, state))
            result.version = manifest.version
            result.added = state["added"]
            result.duplicates += state["dup_existing"]
            result.shard_bytes, result.shards_written = state["shard_bytes"], state["shards"]
            metrics.duplicate(state["dup_existing"])
        else:
            from ldisc.data.manifest import latest_version
            result.version = latest_version(store)
        spool.close()
    result.seconds = time.perf_counter() - t0
    metrics.finish(result)
    return result


def summary_lines(result: IngestResult) -> list[str]:
    """Human-readable end-of-run summary (counts per quarantine reason, throughput)."""
    secs = max(result.seconds, 1e-9)
    lines = [
        f"inputs {result.inputs}  added {result.added}  duplicates {result.duplicates}  "
        f"quarantined {sum(result.quarantined.values())}  -> manifest version {result.version}",
        f"throughput {result.inputs / secs:.1f} images/s  {result.source_bytes / secs / 1e6:.2f} MB/s read  "
        f"{result.shard_bytes / 1e6:.2f} MB in {result.shards_written} shards  ({secs:.1f} s)",
    ]
    lines += [f"  quarantined {reason}: {n}" for reason, n in sorted(result.quarantined.items())]
    lines += [f"  cleaned leftover {kind}: {n}" for kind, n in sorted(result.cleaned.items()) if n]
    return lines

