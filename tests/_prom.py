"""Reading and linting Prometheus text files in tests, with prometheus_client's own parser.

:func:`lint` checks the conventions of :mod:`ldisc.metrics` (what ``promtool check metrics`` checks,
and more): every file parses; names start with ``ldisc_``; counters end in ``_total``; no
``*_created`` series; no ``*_per_second`` gauges; ``_count``/``_sum``/``_bucket`` only on histograms
and summaries; anything in seconds is a ``*_duration_seconds`` or a
``*_timestamp_seconds``; every series carries a non-empty ``run`` label; HELP text everywhere.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from ldisc.metrics import RUN_LABEL


def families(text: str) -> list:
    return list(text_string_to_metric_families(text))


def value(text: str, name: str, **labels: str) -> float:
    """The one sample called ``name`` whose labels include ``labels``."""
    found = [s.value for f in families(text) for s in f.samples
             if s.name == name and all(s.labels.get(k) == str(v) for k, v in labels.items())]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def series(text: str) -> set[tuple[str, frozenset]]:
    return {(s.name, frozenset(s.labels.items())) for f in families(text) for s in f.samples}


def lint(text: str, last_success: bool = True) -> list[str]:
    """Breaches of the conventions in ``text`` (empty when it follows them)."""
    problems = []
    fams = families(text)
    if not fams:
        return ["no metrics"]
    for fam in fams:
        name = fam.name
        if not name.startswith("ldisc_"):
            problems.append(f"{name}: not in the ldisc_ namespace")
        if not fam.documentation:
            problems.append(f"{name}: no HELP text")
        if "per_second" in name:
            problems.append(f"{name}: a precomputed rate; export a counter and use rate()")
        if name.endswith("_seconds") and not name.endswith(("_duration_seconds", "_timestamp_seconds")):
            problems.append(f"{name}: durations are *_duration_seconds")
        if fam.type not in ("histogram", "summary") and name.endswith(("_count", "_sum", "_bucket")):
            problems.append(f"{name}: _count/_sum/_bucket belong to histograms and summaries")
        for s in fam.samples:
            if s.name.endswith("_created"):
                problems.append(f"{s.name}: a _created series")
            if fam.type == "counter" and not s.name.endswith("_total"):
                problems.append(f"{s.name}: counter sample without _total")
            if not s.labels.get(RUN_LABEL):
                problems.append(f"{s.name}{s.labels}: no {RUN_LABEL} label")
    if last_success and not any(f.name.endswith("_last_success_timestamp_seconds") and f.samples for f in fams):
        problems.append("no *_last_success_timestamp_seconds")
    return problems


def promtool() -> str | None:
    """``promtool`` on PATH (Debian package ``prometheus``), or None."""
    return shutil.which("promtool")


def promtool_check(path: Path) -> subprocess.CompletedProcess:
    """``promtool check metrics < path`` (exit 0 and no output when the file is clean)."""
    with open(path, "rb") as fh:
        return subprocess.run([promtool(), "check", "metrics"], stdin=fh, capture_output=True, text=True,
                              timeout=60)
