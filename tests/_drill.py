"""Figures a fault drill test reports to ``bench/drills.py``: one JSON line per call appended to the file named
by ``$LDISC_DRILL_RECORD`` (nothing when unset, as in a plain pytest run)."""
from __future__ import annotations

import json
import os
from collections import Counter


def record(drill: str, **figures) -> None:
    path = os.environ.get("LDISC_DRILL_RECORD")
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps({"drill": drill, **figures}) + "\n")


def lost_and_duplicates(expected: list, seen: list) -> tuple[int, int]:
    """(samples of ``expected`` missing from ``seen``, samples of ``seen`` beyond ``expected``), as multisets."""
    e, s = Counter(expected), Counter(seen)
    return sum((e - s).values()), sum((s - e).values())
