"""Prometheus metrics of a pretraining process (``ldisc_train_*``), labelled by rank."""
from __future__ import annotations

import os
import resource
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server, write_to_textfile

STEP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)


class TrainMetrics:
    """One registry per process; served on ``port + local_rank`` (if port > 0) at ``addr``, and
    written to a textfile on demand. Every series carries the global ``rank`` label."""

    def __init__(self, rank: int = 0, port: int = 0, local_rank: int | None = None, addr: str = "127.0.0.1"):
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
        self.val_loss = Gauge("ldisc_train_val_loss", "Validation loss (held-out split, global mean) at the "
                              "last checkpoint", labels, registry=r)
        self.best_val_loss = Gauge("ldisc_train_best_val_loss", "Lowest validation loss of the current stage "
                                   "(the 'best' checkpoint)", labels, registry=r)
        self.bank_fill = Gauge("ldisc_train_bank_fill_ratio", "Memory-bank entries / capacity", labels, registry=r)
        self.checkpoint_seconds = Histogram("ldisc_train_checkpoint_save_seconds", "Checkpoint save time",
                                            labels, buckets=STEP_BUCKETS, registry=r)
        self.checkpoint_step = Gauge("ldisc_train_checkpoint_step", "Step of the newest complete checkpoint "
                                     "(saved or resumed from)", labels, registry=r)
        self.bad_samples = Counter("ldisc_train_bad_samples_total",
                                   "Samples replaced because they could not be read or decoded, by shard",
                                   labels + ["shard"], registry=r)
        self.manifest_version = Gauge("ldisc_train_manifest_version", "Dataset manifest version of the current "
                                      "epoch (shards: new versions join at epoch boundaries)", labels, registry=r)
        self.manifest_samples = Gauge("ldisc_train_manifest_samples", "Samples in that manifest version",
                                      labels, registry=r)
        self.store_retries = Counter("ldisc_data_store_retries_total", "Object-store reads retried after a "
                                     "connection error or a 5xx answer", labels, registry=r)
        self.max_rss = Gauge("ldisc_process_max_resident_memory_bytes", "Peak resident set size", labels, registry=r)
        self.rss = Gauge("ldisc_process_resident_memory_bytes", "Resident set size now", labels, registry=r)
        self.cluster_crispness = Gauge("ldisc_cluster_crispness", "Mean over pixels of max_k cluster mask",
                                       labels, registry=r)
        self.cluster_effective_count = Gauge("ldisc_cluster_effective_count",
                                             "exp(entropy of the cluster area shares)", labels, registry=r)
        self.cluster_area_share = Gauge("ldisc_cluster_area_share", "Share of the mask mass of each cluster",
                                        labels + ["cluster"], registry=r)
        self.cluster_dice = Gauge("ldisc_cluster_best_match_dice", "Best-match Dice of a true structure "
                                  "against the hard clusters (held-out synthetic probe)", labels + ["structure"],
                                  registry=r)
        self.port = port + (rank if local_rank is None else local_rank) if port > 0 else 0
        self._server = start_http_server(self.port, addr=addr, registry=r) if self.port else None

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
        self.rss.labels(rk).set(current_rss_bytes())

    def observe_validation(self, loss: float, best: float) -> None:
        self.val_loss.labels(self.rank).set(loss)
        self.best_val_loss.labels(self.rank).set(best)

    def observe_clusters(self, stats) -> None:
        """A :class:`~ldisc.objectives.diagnostics.ClusterStats` (training masks or the probe batch)."""
        rk = self.rank
        self.cluster_crispness.labels(rk).set(stats.crispness)
        self.cluster_effective_count.labels(rk).set(stats.effective_count)
        for k, share in enumerate(stats.area_share):
            self.cluster_area_share.labels(rk, str(k)).set(share)
        for name, dice in stats.dice.items():
            self.cluster_dice.labels(rk, name).set(dice)

    def observe_bad_samples(self, shards: list[str]) -> None:
        for shard in shards:
            self.bad_samples.labels(self.rank, shard).inc()

    def observe_data(self, version: int, samples: int, store_retries: int) -> None:
        self.manifest_version.labels(self.rank).set(version)
        self.manifest_samples.labels(self.rank).set(samples)
        if store_retries:
            self.store_retries.labels(self.rank).inc(store_retries)

    def set_bank_fill(self, ratio: float) -> None:
        self.bank_fill.labels(self.rank).set(ratio)

    def observe_checkpoint(self, seconds: float, step: int) -> None:
        self.checkpoint_seconds.labels(self.rank).observe(seconds)
        self.set_checkpoint_step(step)

    def set_checkpoint_step(self, step: int) -> None:
        self.checkpoint_step.labels(self.rank).set(step)

    def write(self, path: str | Path) -> None:
        write_to_textfile(str(path), self.registry)

    def close(self) -> None:
        """Stop serving (the registry stays readable)."""
        if isinstance(self._server, tuple):
            self._server[0].shutdown()
            self._server[0].server_close()
        self._server = None


def current_rss_bytes() -> int:
    """Resident set size of this process now (peak RSS where /proc is missing)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
