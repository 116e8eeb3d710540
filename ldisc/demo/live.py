"""The running pretraining job seen from outside: its Prometheus endpoint, scraped like a monitoring system would.

Metric names come from :class:`ldisc.train.metrics.TrainMetrics` itself (one owner), so a renamed metric is
followed here without an edit.
"""
from __future__ import annotations

import subprocess
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def metric_names() -> dict[str, str]:
    """Role → exported family name (counters without their ``_total`` suffix, as the parser gives them)."""
    from ldisc.train.metrics import TrainMetrics

    m = TrainMetrics()          # port 0: nothing served, only the registry
    return {"steps": m.steps._name, "images": m.images._name,
            "data_wait": m.data_wait_seconds._name, "step_seconds": m.step_seconds._name,
            "manifest_version": m.manifest_version._name, "manifest_samples": m.manifest_samples._name,
            "store_retries": m.store_retries._name}


def scrape(port: int, timeout: float = 2.0) -> dict[str, float] | None:
    """Rank 0's figures now: steps, images so far, mean data wait (s), mean step time (s), manifest version and
    samples, and ``t`` (monotonic seconds of the scrape); None while the endpoint does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as r:
            text = r.read().decode()
    except OSError:
        return None
    names, values = metric_names(), {}
    samples = {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}
    for role, name in names.items():
        if f"{name}_sum" in samples and f"{name}_count" in samples:        # a histogram: its mean
            values[role] = samples[f"{name}_sum"] / max(samples[f"{name}_count"], 1)
        elif f"{name}_total" in samples or name in samples:
            values[role] = samples.get(f"{name}_total", samples.get(name))
    values["t"] = time.monotonic()
    return values


def rate(earlier: dict, later: dict, role: str) -> float:
    """A counter's rate between two scrapes, as ``rate()`` computes it in Prometheus (per second)."""
    seconds = later["t"] - earlier["t"]
    return (later.get(role, 0.0) - earlier.get(role, 0.0)) / seconds if seconds > 0 else 0.0


def wait_for(proc: subprocess.Popen, port: int, done, what: str, timeout_s: float = 1800) -> dict[str, float]:
    """Poll the endpoint until ``done(figures)``; stop the demo if the job ends first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        figures = scrape(port)
        if figures and done(figures):
            return figures
        if proc.poll() is not None:
            raise SystemExit(f"demo: the pretraining job ended (exit {proc.returncode}) before {what}")
        time.sleep(0.5)
    raise SystemExit(f"demo: gave up waiting for {what}")
