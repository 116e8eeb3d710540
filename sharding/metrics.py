"""Prometheus metrics of an ingest run (own registry; served and/or written as a textfile).

Every series is labelled ``run``, ``site`` and ``modality`` (``run``: ``<dataset folder>-<site>``
unless given); conventions in :mod:`ldisc.metrics`. Inputs/s is ``rate(ldisc_shard_inputs_total[5m])``.
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram

from ldisc import metrics as conventions

FILE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class IngestMetrics:
    """Counters, gauges and a histogram named ``ldisc_shard_*`` for one ingest process; :meth:`bind`
    sets the labels before the first input is counted."""

    def __init__(self):
        self.registry = r = conventions.new_registry()
        labels = [conventions.RUN_LABEL, "site", "modality"]
        self.inputs = Counter("ldisc_shard_inputs", "Inputs processed (added, duplicate or quarantined)", labels,
                              registry=r)
        self.samples = Counter("ldisc_shard_samples", "Samples added to the dataset", labels, registry=r)
        self.duplicates = Counter("ldisc_shard_duplicates", "Inputs skipped as duplicates by content hash",
                                  labels, registry=r)
        self.quarantined = Counter("ldisc_shard_quarantined", "Inputs quarantined, by reason", labels + ["reason"],
                                   registry=r)
        self.source_bytes = Counter("ldisc_shard_source_bytes", "Bytes of source files read", labels, registry=r)
        self.shard_bytes = Counter("ldisc_shard_written_bytes", "Bytes of shards written", labels, registry=r)
        self.shards = Counter("ldisc_shard_shards", "Shards written", labels, registry=r)
        self.file_seconds = Histogram("ldisc_shard_file_duration_seconds", "Decode+preprocess time per input",
                                      labels, buckets=FILE_BUCKETS, registry=r)
        self.run_seconds = Gauge("ldisc_shard_ingest_duration_seconds", "Wall time of the last ingest run",
                                 labels, registry=r)
        self.version = Gauge("ldisc_shard_manifest_version", "Manifest version after the run", labels, registry=r)
        self.last_success = conventions.last_success_gauge("ldisc_shard", "ingest run", r, labels)
        self.key: tuple[str, str, str] | None = None

    def bind(self, site: str, modality: str, dataset: str | Path, run: str | None = None) -> None:
        """Label every series of this ingest; the counters start at 0 so that ``rate()`` has a start."""
        self.key = (run or f"{conventions.run_name(dataset)}-{site}", site, modality)
        for counter in (self.inputs, self.samples, self.duplicates, self.source_bytes, self.shard_bytes, self.shards):
            counter.labels(*self.key)

    def observe_input(self, seconds: float, source_bytes: int) -> None:
        self.inputs.labels(*self.key).inc()
        self.source_bytes.labels(*self.key).inc(source_bytes)
        self.file_seconds.labels(*self.key).observe(seconds)

    def quarantine(self, reason: str) -> None:
        self.quarantined.labels(*self.key, reason).inc()

    def duplicate(self, n: int = 1) -> None:
        self.duplicates.labels(*self.key).inc(n)

    def finish(self, result) -> None:
        """An :class:`~sharding.ingest.IngestResult` of a run that ended well."""
        k = self.key
        self.samples.labels(*k).inc(result.added)
        self.shard_bytes.labels(*k).inc(result.shard_bytes)
        self.shards.labels(*k).inc(result.shards_written)
        self.run_seconds.labels(*k).set(result.seconds)
        self.version.labels(*k).set(result.version)
        self.last_success.labels(*k).set_to_current_time()

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        conventions.serve(port, addr, self.registry)

    def write(self, path: str) -> None:
        conventions.write_textfile(path, self.registry)
