"""Fleet progress: a tqdm bar and Prometheus metrics (served on a port and/or written to a text file).

Metrics: ``ldisc_eval_runs_total{status=done|failed|retried|skipped}``, ``ldisc_eval_runs_running``,
``ldisc_eval_run_seconds`` (histogram of the wall time of finished runs, seen from the driver).
"""
from __future__ import annotations

import sys
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server, write_to_textfile
from tqdm import tqdm

STATUSES = ("done", "failed", "retried", "skipped")
RUN_SECONDS_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600, 7200, float("inf"))


class FleetMonitor:
    """Counts runs as they start and end; keeps the bar and the metrics in step."""

    def __init__(self, total: int, textfile: str | Path | None = None, port: int | None = None,
                 progress: bool = True, description: str = "ldisc-eval"):
        self.registry = CollectorRegistry()
        self.runs = Counter("ldisc_eval_runs", "Evaluation runs by outcome", ["status"], registry=self.registry)
        for status in STATUSES:
            self.runs.labels(status)
        self.running = Gauge("ldisc_eval_runs_running", "Evaluation runs in flight", registry=self.registry)
        self.seconds = Histogram("ldisc_eval_run_seconds", "Wall time of finished evaluation runs",
                                 buckets=RUN_SECONDS_BUCKETS, registry=self.registry)
        self.n_failed = 0
        self.textfile = Path(textfile) if textfile else None
        self._server = start_http_server(int(port), addr="127.0.0.1", registry=self.registry) if port else None
        self.bar = tqdm(total=total, desc=description, unit="run", file=sys.stderr, disable=not progress,
                        dynamic_ncols=True)
        self._flush()

    def _flush(self) -> None:
        if self.textfile is not None:
            self.textfile.parent.mkdir(parents=True, exist_ok=True)
            write_to_textfile(str(self.textfile), self.registry)

    def skipped(self, n: int) -> None:
        """Runs already done by an earlier invocation."""
        if n:
            self.runs.labels("skipped").inc(n)
            self.bar.update(n)
            self._flush()

    def started(self) -> None:
        self.running.inc()
        self._flush()

    def retried(self) -> None:
        self.running.dec()
        self.runs.labels("retried").inc()
        self._flush()

    def finished(self, ok: bool, seconds: float) -> None:
        self.running.dec()
        self.runs.labels("done" if ok else "failed").inc()
        self.n_failed += not ok
        self.seconds.observe(seconds)
        self.bar.update(1)
        self.bar.set_postfix(failed=self.n_failed, refresh=False)
        self._flush()

    def close(self) -> None:
        self.bar.close()
        self._flush()
        if self._server is not None:
            server = self._server[0] if isinstance(self._server, tuple) else None
            if server is not None:
                server.shutdown()
                server.server_close()
