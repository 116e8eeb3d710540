"""Prometheus metrics of an ingest run (own registry; served and/or written as a textfile)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client import write_to_textfile


class IngestMetrics:
    """Counters and histograms named ``ldisc_shard_*`` for one ingest process."""

    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.samples = Counter("ldisc_shard_samples", "Samples added to the dataset",
                               ["site", "modality"], registry=r)
        self.duplicates = Counter("ldisc_shard_duplicates", "Inputs skipped as duplicates by content hash",
                                  ["site", "modality"], registry=r)
        self.quarantined = Counter("ldisc_shard_quarantined", "Inputs quarantined", ["reason"], registry=r)
        self.source_bytes = Counter("ldisc_shard_source_bytes", "Bytes of source files read", registry=r)
        self.shard_bytes = Counter("ldisc_shard_written_bytes", "Bytes of shards written", registry=r)
        self.shards = Counter("ldisc_shard_shards", "Shards written", registry=r)
        self.file_seconds = Histogram("ldisc_shard_file_seconds", "Decode+preprocess time per input",
                                      buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
                                      registry=r)
        self.run_seconds = Gauge("ldisc_shard_ingest_seconds", "Wall time of the ingest run", registry=r)
        self.version = Gauge("ldisc_shard_manifest_version", "Manifest version after the run", registry=r)
        self.throughput = Gauge("ldisc_shard_images_per_second", "Inputs processed per second", registry=r)

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        start_http_server(port, addr=addr, registry=self.registry)

    def write(self, path: str) -> None:
        write_to_textfile(path, self.registry)
