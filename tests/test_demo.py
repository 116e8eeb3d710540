"""``make demo DEMO_SIZE=tiny`` end to end (slow: minutes): the three jobs together, the stream-in of hospital B
at an epoch boundary, the idempotent re-ingest, the scrape, the evaluation table and the one report."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ldisc.eval.tasks import APP_TASKS, TWIN_TASKS

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_tiny_demo_runs_the_three_jobs_together(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "ldisc.demo", "--size", "tiny", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "second added 0" in proc.stdout
    versions = [json.loads(x) for x in (out / "pretrain" / "data_versions.jsonl").read_text().splitlines()]
    assert [v["manifest_version"] for v in versions] == [2, 3] and versions[1]["step"] > 0
    assert versions[1]["samples"] - versions[0]["samples"] == 20          # hospital B's images, once
    assert "images/s, data wait" in proc.stdout
    rows = pq.read_table(out / "eval" / "results.parquet").to_pylist()
    tasks = {r["task"].split("@")[0] for r in rows if r["status"] == "ok"}
    assert tasks == set(TWIN_TASKS) | set(APP_TASKS)
    assert {r["checkpoint"] for r in rows} >= {"random"} and len({r["checkpoint"] for r in rows}) >= 2
    report = (out / "eval" / "report" / "report.html").read_text()
    for title in ("Pretraining loss curves", "What LD sees and learns", "Landmark heat-map", "Shape-guided vessel mask"):
        assert title in report
    assert report.count("data:image/png;base64,") >= 5
