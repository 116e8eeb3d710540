"""Prometheus metrics of a pretraining process (``ldisc_train_*``), labelled by rank."""
from __future__ import annotations

import resource
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server, write_to_textfile

STEP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)


class TrainMetrics:
    """One registry per process; served on ``port`` (if > 0) and written to a textfile on demand."""

    def __init__(self, rank: int = 0, port: int = 0):
        self.registry = CollectorRegistry()
        r = self.registry
        labels = ["rank"]
        self.rank = str(rank)
        self.step_seconds = Histogram("ldisc_train_step_seconds", "Wall time of one optimiser step",
                                      labels, buckets=STEP_BUCKETS, registry=r)
        self.data_wait_seconds = Histogram("ldisc_train_data_wait_seconds", "Time waiting for the next batch",
                                           labels, buckets=STEP_BUCKETS, registry=r)
        self.images = Counter("ldisc_train_images_total", "Input images processed (views count once each)",
                              labels, registry=r)
        self.steps = Counter("ldisc_train_steps_total", "Optimiser steps taken", labels, registry=r)
        self.images_per_second = Gauge("ldisc_train_images_per_second", "Throughput of the last step",
                                       labels, registry=r)
        self.loss = Gauge("ldisc_train_loss", "Loss terms of the last step", labels + ["term"], registry=r)
        self.stage = Gauge("ldisc_train_stage", "Current LD stage", labels, registry=r)
        self.bank_fill = Gauge("ldisc_train_bank_fill_ratio", "Memory-bank entries / capacity", labels, registry=r)
        self.checkpoint_seconds = Histogram("ldisc_train_checkpoint_save_seconds", "Checkpoint save time",
                                            labels, buckets=STEP_BUCKETS, registry=r)
        self.max_rss = Gauge("ldisc_process_max_resident_memory_bytes", "Peak resident set size", labels, registry=r)
        if port > 0:
            start_http_server(port + rank, addr="127.0.0.1", registry=r)

    def observe_step(self, seconds: float, data_wait: float, images: int, terms: dict[str, float], stage: int) -> None:
        rk = self.rank
        self.step_seconds.labels(rk).observe(seconds)
        self.data_wait_seconds.labels(rk).observe(data_wait)
        self.images.labels(rk).inc(images)
        self.steps.labels(rk).inc()
        self.images_per_second.labels(rk).set(images / max(seconds, 1e-9))
        self.stage.labels(rk).set(stage)
        for name, value in terms.items():
            self.loss.labels(rk, name).set(value)
        self.max_rss.labels(rk).set(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)

    def write(self, path: str | Path) -> None:
        write_to_textfile(str(path), self.registry)
