"""Drills: each failure mode, the test that reproduces it, and whether it passes now. Prints one JSON object.

    python bench/drills.py                    # every group (many minutes on 2 loaded cores)
    python bench/drills.py --group faults     # the issue-15 fault drills only
    python bench/drills.py --only s3_outage corrupt_shard

Group ``hardening`` (issue 9): each test failed on the commit before its fix; ``BEFORE`` keeps what the probe
saw there. Group ``faults`` (issue 15): kills, corruption, outages and a full disk while the product works.
Their tests write their figures (samples lost, duplicates, time to recover, retries, ...) to the file named
by ``$LDISC_DRILL_RECORD``; a fault drill passes when its tests pass and no sample was lost or repeated.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

HARDENING = {
    "ray_listens_on_all_interfaces": "tests/test_listeners.py::test_local_ray_fleet_listens_on_loopback_only_and_requires_its_token",
    "single_process_tcpstore_on_all_interfaces": "tests/test_listeners.py::test_single_process_pretraining_listens_on_loopback_only",
    "two_process_stores_on_all_interfaces": "tests/test_listeners.py::test_two_process_pretraining_listens_on_loopback_only",
    "silent_training_on_bad_samples": "tests/test_bad_data.py",
    "impossible_config_exit_0": "tests/test_cli_misuse.py::test_pretrain_rejects_impossible_values",
    "console_script_misuse_traceback": "tests/test_cli_misuse.py",
    "checkpoint_corruption_undetected": "tests/test_checkpoint_integrity.py",
    "symlink_loop_aborts_ingest": "tests/test_ingest_edges.py",
    "dual_personality_dicom_as_tiff": "tests/test_dicom_decode.py",
    "shard_verify_missing_dataset_exit_0": "tests/test_cli_misuse.py::test_shard_misuse",
    "shard_cli_sigabrt_at_exit": "tests/test_shard_exit.py",
}

BEFORE = {
    "ray_listens_on_all_interfaces": "gcs_server, raylet, workers and driver on '::', metrics agent on 0.0.0.0, "
                                     "runtime-env agent on the external address; GCS answered without a token",
    "single_process_tcpstore_on_all_interfaces": "one listener on '::' (the TCPStore)",
    "two_process_stores_on_all_interfaces": "torchrun agent stores on '::' (rendezvous and worker store)",
    "silent_training_on_bad_samples": "every .tar deleted: rc 0 on black placeholders, nothing logged",
    "impossible_config_exit_0": "train.stage1_steps=-5: exit 0 having trained nothing",
    "console_script_misuse_traceback": "bad overrides, missing datasets: tracebacks or Hydra's exit 1",
    "checkpoint_corruption_undetected": "flipped optimizer byte loaded silently; truncated newest checkpoint crashed resume",
    "symlink_loop_aborts_ingest": "loop quarantined as processing_error at best; report written to the cwd, 0644",
    "dual_personality_dicom_as_tiff": "TIFF preamble won: percentile window, no inversion, path-based patient key",
    "shard_verify_missing_dataset_exit_0": "'0 problems', exit 0",
    "shard_cli_sigabrt_at_exit": "1 of 120 verify runs: rc 134, 'terminate called without an active exception'",
}

_D = "tests/test_fault_drills.py::"
FAULTS = {
    "kill_training_rank": [f"{_D}test_kill_a_rank_mid_epoch_under_ldisc_launch_resumes_exactly",
                           "tests/test_fault_tolerance.py::test_kill_one_rank_mid_epoch_then_resume_exactly"],
    "kill_during_checkpoint_save": [
        "tests/test_fault_tolerance.py::test_crash_during_save_keeps_previous_checkpoint",
        "tests/test_checkpoint_integrity.py::test_resume_auto_falls_back_past_a_truncated_newest_checkpoint"],
    "kill_ingest_and_rerun": ["tests/test_shard_crash_concurrency.py::test_sigkill_mid_commit_then_rerun_equals_clean_run"],
    "corrupt_shard": [f"{_D}test_corrupt_shards_are_named_by_verify_and_skipped_and_counted_by_training"],
    "kill_ray_worker_during_eval": ["tests/test_eval_fleet.py::test_fleet_survives_a_killed_worker_and_reruns_nothing"],
    "concurrent_ingests": ["tests/test_shard_crash_concurrency.py::test_concurrent_local_ingests_both_land",
                           "tests/test_shard_crash_concurrency.py::test_s3_ingest_verify_and_concurrent_optimistic_commits"],
    "s3_outage": [f"{_D}test_s3_outage_during_a_training_run_is_retried_and_counted",
                  f"{_D}test_s3_outage_mid_epoch_loader_retries_and_loses_nothing"],
    "disk_full_checkpoint_save": [f"{_D}test_disk_full_during_a_checkpoint_save_real_tmpfs",
                                  f"{_D}test_disk_full_during_a_checkpoint_save_injected_enospc"],
}
GROUPS = {"hardening": HARDENING, "faults": FAULTS}


def _pytest(tests: list[str], record: Path | None = None) -> tuple[bool, str, float]:
    t0 = time.perf_counter()
    env = dict(os.environ, **({"LDISC_DRILL_RECORD": str(record)} if record else {}))
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "", "-p", "no:cacheprovider", "-rs", *tests],
                         cwd=REPO, capture_output=True, text=True, env=env)
    lines = out.stdout.strip().splitlines()
    tail = lines[-1] if lines else out.stderr[-200:]
    return out.returncode == 0, tail, round(time.perf_counter() - t0, 1)


def run_hardening(name: str) -> dict:
    passing, tail, seconds = _pytest([HARDENING[name]])
    return {"before": BEFORE[name], "passing": passing, "pytest": tail, "seconds": seconds}


def run_fault(name: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="ldisc-drill-") as tmp:
        record = Path(tmp) / "record.jsonl"
        passing, tail, seconds = _pytest(FAULTS[name], record)
        figures = [json.loads(x) for x in record.read_text().splitlines()] if record.is_file() else []
    lost = sum(int(f.get("samples_lost") or 0) for f in figures)
    dups = sum(int(f.get("duplicates") or 0) for f in figures)
    recover = [f["recover_s"] for f in figures if f.get("recover_s") is not None]
    return {"passing": passing and bool(figures) and lost == 0 and dups == 0, "samples_lost": lost,
            "duplicates": dups, "time_to_recover_s": max(recover) if recover else None,
            "tests": FAULTS[name], "pytest": tail, "seconds": seconds,
            "figures": [{k: v for k, v in f.items() if k != "drill"} for f in figures]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--group", choices=["all", *GROUPS], default="all")
    ap.add_argument("--only", nargs="*", choices=sorted([*HARDENING, *FAULTS]))
    args = ap.parse_args()
    groups = list(GROUPS) if args.group == "all" else [args.group]
    results = {}
    for group in groups:
        names = [n for n in GROUPS[group] if not args.only or n in args.only]
        run = run_fault if group == "faults" else run_hardening
        results.update({name: {"group": group, **run(name)} for name in names})
    print(json.dumps({"bench": "drills", "date": time.strftime("%Y-%m-%d"), "passing": sum(r["passing"] for r in results.values()),
                      "total": len(results), "drills": results}, indent=1))
    return 0 if all(r["passing"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
