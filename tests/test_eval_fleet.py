"""The evaluation fleet on a real local Ray with 2 CPUs, driven through the real ``ldisc-eval`` command."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from _drill import record
from ldisc.eval.monitor import FleetMonitor
from _prom import lint, series, value

REPO = Path(__file__).resolve().parents[1]
EVAL = [sys.executable, "-m", "ldisc.eval.cli"]
COMMON = ["protocol=smoke", "protocol.epochs_frozen=4", "data.max_test=6", "ray.num_cpus=2", "fleet.progress=false",
          "protocols=[frozen,finetune]", "seeds=[0]", "checkpoints=[random]"]


def _env() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith("RAY_")} | {"PYTHONUNBUFFERED": "1"}


def _metrics(out: Path) -> dict[str, float]:
    """Final outcomes (``ldisc_eval_runs_total`` by status) and, apart, ``retries``."""
    text = (out / "metrics.prom").read_text()
    found = {s: value(text, "ldisc_eval_runs_total", run=out.name, status=s) for s in ("done", "failed", "skipped")}
    return found | {"retries": value(text, "ldisc_eval_run_retries_total", run=out.name)}


def _rows(out: Path) -> list[dict]:
    return pq.read_table(out / "results.parquet").to_pylist()


def test_fleet_survives_a_killed_worker_and_reruns_nothing(tmp_path):
    out = tmp_path / "eval"
    tasks = "tasks=[synth_idrid_disc@8,synth_jsrt_lung@8,synth_rite_vessel@8]"
    cmd = EVAL + COMMON + [tasks, f"out_dir={out}"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed_run, deadline = None, time.monotonic() + 300     # a loaded machine starts Ray slowly
    while killed_run is None and time.monotonic() < deadline and proc.poll() is None:
        for marker in sorted((out / "running").glob("*.json")) if (out / "running").is_dir() else []:
            try:
                info = json.loads(marker.read_text())
            except (OSError, ValueError):
                continue  # being written or just removed
            os.kill(info["pid"], signal.SIGKILL)
            killed_run = info["run_id"]
            break
        time.sleep(0.05)
    stdout, _ = proc.communicate(timeout=300)
    wall = time.perf_counter() - t0
    assert killed_run is not None, "no run was seen in flight"
    assert proc.returncode == 0, stdout

    rows = _rows(out)
    assert len(rows) == 6 and {r["status"] for r in rows} == {"ok"}
    assert {(r["task"], r["protocol"]) for r in rows} == {(t, p) for t in ("synth_idrid_disc@8", "synth_jsrt_lung@8",
                                                                          "synth_rite_vessel@8")
                                                         for p in ("frozen", "finetune")}
    attempts = {r["run_id"]: r["attempt"] for r in rows}
    assert attempts.pop(killed_run) == 2, "the killed run is retried once"
    assert set(attempts.values()) == {1}, "the other runs are kept from their first attempt"
    for r in rows:
        assert len(r["dice_per_image"]) == r["n_test"] == 6 and 0 <= r["dice_mean"] <= 1
        # the paper protocol's random-init baseline: trained end to end (epochs_scratch), no frozen phase
        assert r["n_train"] + r["n_val"] == 8 and r["n_val"] == 1 and r["batch_size"] == 2
        assert (r["epochs_frozen"], r["epochs_finetune"]) == (0, 2)
        assert [h["phase"] for h in json.loads(r["history"])] == ["scratch", "scratch"]
        assert r["wall_s"] > 0 and r["host"] and json.loads(r["versions"])["ray"]
        assert len(list((out / "overlays" / r["run_id"]).glob("*.png"))) == 2
    assert _metrics(out) == {"done": 6.0, "failed": 0.0, "skipped": 0.0, "retries": 1.0}
    text = (out / "metrics.prom").read_text()
    assert value(text, "ldisc_eval_run_duration_seconds_count") == 6
    assert value(text, "ldisc_eval_last_success_timestamp_seconds") > 1.7e9 and lint(text) == []
    assert "6 runs planned, 0 already done, 6 done, 0 failed, 1 retried" in stdout
    assert (out / "report" / "report.md").is_file() and (out / "report" / "dice.png").is_file()
    print(f"\nfleet of 6 runs with one killed worker: {wall:.1f} s")
    keys = [(r["task"], r["protocol"]) for r in rows]
    record("kill_ray_worker_during_eval", samples_lost=6 - len(set(keys)), duplicates=len(keys) - len(set(keys)),
           unit="runs", retried=int(_metrics(out)["retries"]), fleet_wall_s=round(wall, 1))

    before = {r["run_id"]: r["finished_at"] for r in rows}
    again = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "6 runs planned, 6 already done, 0 done, 0 failed" in again.stdout
    assert {r["run_id"]: r["finished_at"] for r in _rows(out)} == before, "nothing was recomputed"
    assert _metrics(out)["skipped"] == 6.0 and _metrics(out)["done"] == 0.0


def test_failing_runs_are_retried_then_recorded_and_retried_on_rerun(tmp_path):
    # A file that is not an encoder is now rejected before any run (test_cli_misuse); runs that fail
    # are injected by task instead.
    out, failing = tmp_path / "eval", "synth_jsrt_lung@8"
    cmd = EVAL + COMMON + [f"tasks=[synth_idrid_disc@8,{failing}]", "fleet.retries=1", "protocols=[frozen]",
                           f"out_dir={out}"]
    env = _env() | {"LDISC_FAULT_EVAL_FAIL_TASK": failing}
    first = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 1, first.stdout + first.stderr
    rows = {r["task"]: r for r in _rows(out)}
    assert rows["synth_idrid_disc@8"]["status"] == "ok"
    failed = rows[failing]
    assert failed["status"] == "failed" and failed["attempt"] == 2 and "injected failure" in failed["error"]
    assert failed["dice_mean"] is None and f"failed: random {failing} frozen" in first.stderr
    assert _metrics(out) == {"done": 1.0, "failed": 1.0, "skipped": 0.0, "retries": 1.0}
    # a fleet with a failed run is no success: the timestamp stays unset
    assert "ldisc_eval_last_success_timestamp_seconds" not in {n for n, _ in series((out / "metrics.prom").read_text())}

    second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 1
    assert "2 runs planned, 1 already done, 0 done, 1 failed, 1 retried" in second.stdout
    assert {r["task"]: r["attempt"] for r in _rows(out)}[failing] == 4, "attempts add up"


def test_a_missing_dataset_folder_stops_the_command_before_any_run(tmp_path):
    out = tmp_path / "eval"
    res = subprocess.run(EVAL + COMMON + ["tasks=[idrid_disc]", f"data.roots.idrid={tmp_path}", f"out_dir={out}"],
                         cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "IDRiD: found 0 training and 0 test images" in res.stderr
    assert not (out / "results.parquet").exists()


def test_monitor_serves_prometheus_metrics_and_writes_the_textfile(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mon = FleetMonitor(3, tmp_path / "metrics.prom", port=port, progress=False)
    try:
        mon.skipped(1)
        mon.started()
        mon.started()
        mon.finished(True, 4.0)
        mon.retried()
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        mon.close()
    for line in ('ldisc_eval_runs_total{run="ldisc-eval",status="done"} 1.0',
                 'ldisc_eval_runs_total{run="ldisc-eval",status="skipped"} 1.0',
                 'ldisc_eval_runs_total{run="ldisc-eval",status="failed"} 0.0',
                 'ldisc_eval_run_retries_total{run="ldisc-eval"} 1.0', 'ldisc_eval_runs_running{run="ldisc-eval"} 0.0',
                 'ldisc_eval_run_duration_seconds_count{run="ldisc-eval"} 1.0',
                 'ldisc_eval_run_duration_seconds_sum{run="ldisc-eval"} 4.0'):
        assert line in body and line in (tmp_path / "metrics.prom").read_text()
    assert "_created" not in body and 'status="retried"' not in body


def test_protocol_shorthand_and_watch_mode_compose_like_the_long_spelling(tmp_path):
    from ldisc.eval.cli import compose_config, expand_shorthands

    argv = ["mode=watch", f"watch.dir={tmp_path}", "metrics.port=9100", "protocol=smoke", "seeds=[0]"]
    assert expand_shorthands(argv)[3] == "eval/protocol@protocol=smoke"
    assert expand_shorthands(["protocol=paper,smoke"]) == ["eval/protocol@protocol=paper,smoke"]
    assert expand_shorthands(["protocol.device=cpu"]) == ["protocol.device=cpu"]     # a key, not a preset
    short = compose_config(argv)
    long = compose_config([*argv[:3], "eval/protocol@protocol=smoke", "seeds=[0]"])
    assert short == long and short.mode == "watch" and short.watch.dir == str(tmp_path)
    assert short.protocol.epochs_frozen != compose_config([]).protocol.epochs_frozen   # smoke ≠ paper
