"""Fleet progress: a tqdm bar and Prometheus metrics (served on a port and/or written to a text file).

Metrics (all labelled ``run``; conventions in :mod:`ldisc.metrics`):
``ldisc_eval_runs_total{status=done|failed|skipped}`` (final outcomes: each planned run counts once),
``ldisc_eval_run_retries_total`` (attempts that failed and were tried again), ``ldisc_eval_runs_running``,
``ldisc_eval_run_duration_seconds`` (histogram of the wall time of finished runs, seen from the driver),
``ldisc_eval_last_success_timestamp_seconds`` (set when a fleet ends with no failed run).
``metrics.textfile`` writes ``<out_dir>/metrics.prom``; ``metrics.textfile_dir`` also
``<dir>/ldisc_eval_<run>.prom`` (a node-exporter textfile folder).
"""
from __future__ import annotations

import sys
from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram
from tqdm import tqdm

from ldisc import metrics as conventions

STATUSES = ("done", "failed", "skipped")
RUN_SECONDS_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600, 7200, float("inf"))


class FleetMonitor:
    """Counts runs as they start and end; keeps the bar and the metrics in step."""

    def __init__(self, total: int, textfile: str | Path | list | None = None, port: int | None = None,
                 progress: bool = True, description: str = "ldisc-eval", run: str = "ldisc-eval"):
        self.registry = r = conventions.new_registry()
        self.run = str(run)
        labels = [conventions.RUN_LABEL]
        self.runs = Counter("ldisc_eval_runs", "Evaluation runs by final outcome", labels + ["status"], registry=r)
        for status in STATUSES:
            self.runs.labels(self.run, status)
        self.retries = Counter("ldisc_eval_run_retries", "Evaluation run attempts that failed and were retried",
                               labels, registry=r).labels(self.run)
        self.running = Gauge("ldisc_eval_runs_running", "Evaluation runs in flight", labels, registry=r).labels(self.run)
        self.seconds = Histogram("ldisc_eval_run_duration_seconds", "Wall time of finished evaluation runs",
                                 labels, buckets=RUN_SECONDS_BUCKETS, registry=r).labels(self.run)
        self.last_success = conventions.last_success_gauge("ldisc_eval", "evaluation fleet with no failed run", r)
        self.n_failed = 0
        self.textfiles = [Path(p) for p in (textfile if isinstance(textfile, list) else [textfile]) if p]
        self._server = conventions.serve(int(port), "127.0.0.1", r) if port else None
        self.bar = tqdm(total=total, desc=description, unit="run", file=sys.stderr, disable=not progress,
                        dynamic_ncols=True)
        self._flush()

    def _flush(self) -> None:
        for path in self.textfiles:
            conventions.write_textfile(path, self.registry)

    def skipped(self, n: int) -> None:
        """Runs already done by an earlier invocation."""
        if n:
            self.runs.labels(self.run, "skipped").inc(n)
            self.bar.update(n)
            self._flush()

    def started(self) -> None:
        self.running.inc()
        self._flush()

    def retried(self) -> None:
        self.running.dec()
        self.retries.inc()
        self._flush()

    def finished(self, ok: bool, seconds: float) -> None:
        self.running.dec()
        self.runs.labels(self.run, "done" if ok else "failed").inc()
        self.n_failed += not ok
        self.seconds.observe(seconds)
        self.bar.update(1)
        self.bar.set_postfix(failed=self.n_failed, refresh=False)
        self._flush()

    def succeeded(self) -> None:
        """A fleet (one ``evaluate`` of ldisc-eval) ended with no failed run."""
        self.last_success.labels(self.run).set_to_current_time()
        self._flush()

    def close(self) -> None:
        self.bar.close()
        self._flush()
        conventions.stop(self._server)
        self._server = None
