"""The hardening drills of issue 9: each failure found by the probes, the test that reproduces it, and
whether it passes now. Prints one JSON object.

    python bench/drills.py            # every drill (several minutes on 2 loaded cores)
    python bench/drills.py --only ray_listens_on_all_interfaces

Each test reproduces the failure against the old behaviour: it failed on the commit before the fix. The
table of what failed before is kept in ``BEFORE`` with what the probe saw there.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

DRILLS = {
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


def run(name: str) -> dict:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "", "-p", "no:cacheprovider", DRILLS[name]],
                         cwd=REPO, capture_output=True, text=True)
    tail = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr[-200:]
    return {"before": BEFORE[name], "passing": out.returncode == 0, "pytest": tail,
            "seconds": round(time.perf_counter() - t0, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", choices=sorted(DRILLS))
    args = ap.parse_args()
    results = {name: run(name) for name in (args.only or DRILLS)}
    print(json.dumps({"bench": "drills", "passing": sum(r["passing"] for r in results.values()),
                      "total": len(results), "drills": results}, indent=1))
    return 0 if all(r["passing"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
