"""The Prometheus conventions of every ldisc process (pretraining, evaluation, ingestion), in one place.

- Every series carries a ``run`` label (:data:`RUN_LABEL`): the run's name. Textfiles of two runs
  dropped into one node-exporter textfile folder never hold the same series, and
  :func:`textfile_name` gives each run's file its own name there.
- No ``*_created`` series (turned off process-wide by :func:`new_registry`): a textfile collector
  would publish them as gauges that only say when the process started.
- Throughput is a counter (``*_total``) read with ``rate()``, never a precomputed ``*_per_second``
  gauge; durations are named ``*_duration_seconds``; a job that ends well sets its
  ``*_last_success_timestamp_seconds`` gauge (:func:`last_success_gauge`).

``tests/test_prometheus_conventions.py`` checks every file the processes write against these rules
(with ``promtool check metrics`` where it is installed).
"""
from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, disable_created_metrics, start_http_server, write_to_textfile

RUN_LABEL = "run"


def new_registry() -> CollectorRegistry:
    """A fresh registry; ``*_created`` series are off from here on in this process."""
    disable_created_metrics()
    return CollectorRegistry()


def run_name(where: str | Path) -> str:
    """The ``run`` label of a run that lives in directory ``where``: its last path component."""
    return Path(str(where)).expanduser().resolve().name or "root"


def textfile_name(job: str, run: str, rank: int | None = None) -> str:
    """``ldisc_<job>_<run>[_rank<R>].prom``: a file name unique per run (and rank) for a shared
    node-exporter textfile folder."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", run)
    return f"ldisc_{job}_{safe}" + ("" if rank is None else f"_rank{int(rank)}") + ".prom"


def last_success_gauge(prefix: str, job: str, registry: CollectorRegistry, labels=(RUN_LABEL,)) -> Gauge:
    """``<prefix>_last_success_timestamp_seconds``; set it with ``.labels(...).set_to_current_time()``."""
    return Gauge(f"{prefix}_last_success_timestamp_seconds", f"Unix time at which the last {job} ended well",
                 list(labels), registry=registry)


def write_textfile(path: str | Path, registry: CollectorRegistry) -> Path:
    """Write the registry in the text format (atomically: a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), registry)
    return path


def serve(port: int, addr: str, registry: CollectorRegistry):
    """Serve ``/metrics`` on ``addr:port``; returns a handle for :func:`stop`."""
    return start_http_server(int(port), addr=addr, registry=registry)


def stop(server) -> None:
    if isinstance(server, tuple):      # (WSGIServer, thread) since prometheus_client 0.18
        server[0].shutdown()
        server[0].server_close()
