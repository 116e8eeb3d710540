"""Prometheus metrics of a pretraining process (``ldisc_train_*``), labelled by run and rank.

Conventions (run label, no ``_created``, counters for throughput, ``*_duration_seconds``, last
success): :mod:`ldisc.metrics`. Images/s is ``rate(ldisc_train_images_total[5m])``; the share of
step time spent waiting for data is ``rate(…data_wait_duration_seconds_sum) / rate(…step_duration_seconds_sum)``.
"""
from __future__ import annotations

import os
import resource
from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram

from ldisc import metrics as conventions

STEP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)


class TrainMetrics:
    """One registry per process; served on ``port + local_rank`` (if port > 0) at ``addr``, and
    written to a textfile on demand. Every series carries the ``run`` and global ``rank`` labels."""

    def __init__(self, rank: int = 0, port: int = 0, local_rank: int | None = None, addr: str = "127.0.0.1",
                 run: str = "ldisc"):
        self.registry = r = conventions.new_registry()
        labels = [conventions.RUN_LABEL, "rank"]
        self.rank, self.run = str(rank), str(run)
        self.key = (self.run, self.rank)
        self.step_seconds = Histogram("ldisc_train_step_duration_seconds", "Wall time of one optimiser step",
                                      labels, buckets=STEP_BUCKETS, registry=r)
        self.data_wait_seconds = Histogram("ldisc_train_data_wait_duration_seconds",
                                           "Time waiting for the next batch, per step", labels,
                                           buckets=STEP_BUCKETS, registry=r)
        self.images = Counter("ldisc_train_images_total", "Input images processed (views count once each); "
                              "images/s = rate()", labels, registry=r)
        self.steps = Counter("ldisc_train_steps_total", "Optimiser steps taken by this process", labels, registry=r)
        self.step = Gauge("ldisc_train_step", "Global optimiser step of the run (continues across resumes)",
                          labels, registry=r)
        self.loss = Gauge("ldisc_train_loss", "Loss terms of the last step", labels + ["term"], registry=r)
        self.stage = Gauge("ldisc_train_stage", "Current LD stage", labels, registry=r)
        self.val_loss = Gauge("ldisc_train_val_loss", "Validation loss (held-out split, global mean) at the "
                              "last checkpoint", labels, registry=r)
        self.best_val_loss = Gauge("ldisc_train_best_val_loss", "Lowest validation loss of the current stage "
                                   "(the 'best' checkpoint)", labels, registry=r)
        self.bank_fill = Gauge("ldisc_train_bank_fill_ratio", "Memory-bank entries / capacity", labels, registry=r)
        self.checkpoint_seconds = Histogram("ldisc_train_checkpoint_save_duration_seconds", "Checkpoint save time",
                                            labels, buckets=STEP_BUCKETS, registry=r)
        self.checkpoint_step = Gauge("ldisc_train_checkpoint_step", "Step of the newest complete checkpoint "
                                     "(saved or resumed from)", labels, registry=r)
        self.bad_samples = Counter("ldisc_train_bad_samples_total",
                                   "Samples replaced because they could not be read or decoded, by shard",
                                   labels + ["shard"], registry=r)
        self.last_success = conventions.last_success_gauge("ldisc_train", "pretraining run", r, labels)
        from ldisc.data.shard_cache import CACHE_EVENTS

        self.shard_cache = {event: Counter(f"ldisc_train_shard_cache_{event}_total", text, labels, registry=r)
                            for event, text in CACHE_EVENTS.items()}
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
        self.cluster_effective_count = Gauge("ldisc_cluster_effective_number",
                                             "exp(entropy of the cluster area shares)", labels, registry=r)
        self.cluster_area_share = Gauge("ldisc_cluster_area_share", "Share of the mask mass of each cluster",
                                        labels + ["cluster"], registry=r)
        self.cluster_dice = Gauge("ldisc_cluster_best_match_dice", "Best-match Dice of a true structure "
                                  "against the hard clusters (held-out synthetic probe)", labels + ["structure"],
                                  registry=r)
        for counter in (self.images, self.steps):
            counter.labels(*self.key)       # present (at 0) from the first scrape, so rate() has a start
        self.port = port + (rank if local_rank is None else local_rank) if port > 0 else 0
        self._server = conventions.serve(self.port, addr, r) if self.port else None

    def observe_step(self, seconds: float, data_wait: float, images: int, terms: dict[str, float], stage: int,
                     step: int | None = None) -> None:
        k = self.key
        self.step_seconds.labels(*k).observe(seconds)
        self.data_wait_seconds.labels(*k).observe(data_wait)
        self.images.labels(*k).inc(images)
        self.steps.labels(*k).inc()
        if step is not None:
            self.step.labels(*k).set(step)
        self.stage.labels(*k).set(stage)
        for name, value in terms.items():
            self.loss.labels(*k, name).set(value)
        self.max_rss.labels(*k).set(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        self.rss.labels(*k).set(current_rss_bytes())

    def observe_validation(self, loss: float, best: float) -> None:
        self.val_loss.labels(*self.key).set(loss)
        self.best_val_loss.labels(*self.key).set(best)

    def observe_clusters(self, stats) -> None:
        """A :class:`~ldisc.objectives.diagnostics.ClusterStats` (training masks or the probe batch)."""
        k = self.key
        self.cluster_crispness.labels(*k).set(stats.crispness)
        self.cluster_effective_count.labels(*k).set(stats.effective_count)
        for i, share in enumerate(stats.area_share):
            self.cluster_area_share.labels(*k, str(i)).set(share)
        for name, dice in stats.dice.items():
            self.cluster_dice.labels(*k, name).set(dice)

    def observe_bad_samples(self, shards: list[str]) -> None:
        for shard in shards:
            self.bad_samples.labels(*self.key, shard).inc()

    def observe_shard_cache(self, events: dict | None) -> None:
        """Shard-cache events of a batch (``batch['shard_cache']``, ``ldisc.data.shard_cache``)."""
        for event, n in (events or {}).items():
            if event in self.shard_cache and n:
                self.shard_cache[event].labels(*self.key).inc(n)

    def observe_data(self, version: int, samples: int, store_retries: int) -> None:
        self.manifest_version.labels(*self.key).set(version)
        self.manifest_samples.labels(*self.key).set(samples)
        if store_retries:
            self.store_retries.labels(*self.key).inc(store_retries)

    def set_bank_fill(self, ratio: float) -> None:
        self.bank_fill.labels(*self.key).set(ratio)

    def observe_checkpoint(self, seconds: float, step: int) -> None:
        self.checkpoint_seconds.labels(*self.key).observe(seconds)
        self.set_checkpoint_step(step)

    def set_checkpoint_step(self, step: int) -> None:
        self.checkpoint_step.labels(*self.key).set(step)

    def mark_success(self) -> None:
        """The run reached its last step."""
        self.last_success.labels(*self.key).set_to_current_time()

    def write(self, path: str | Path) -> None:
        conventions.write_textfile(path, self.registry)

    def close(self) -> None:
        """Stop serving (the registry stays readable)."""
        conventions.stop(self._server)
        self._server = None


def current_rss_bytes() -> int:
    """Resident set size of this process now (peak RSS where /proc is missing)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
