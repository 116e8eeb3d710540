"""Every long-running component listens on loopback only, and the local Ray requires its token.

Each test starts the component in real processes, lists the listening sockets of every process it
started (psutil), and asserts that each one is bound to a loopback address. Nothing here connects to a
non-loopback address.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from _listeners import exposed, is_loopback, listeners, process_tree

REPO = Path(__file__).resolve().parents[1]

# The driver imports ray *before* ldisc starts it, with the environment a user has by default (no
# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER, RAY_AUTH_MODE=disabled as the old Makefile exported): the order that
# made Ray listen on every interface.
_RAY_DRIVER = textwrap.dedent("""
    import json, os, sys
    import ray
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc
    from ldisc.eval.fleet import FleetConfig, init_ray
    from ldisc.eval.ray_local import stop_local_ray
    from _listeners import listeners, process_tree

    init_ray(FleetConfig(num_cpus=1, warm_start=False))
    pid = ray.get(ray.remote(lambda: os.getpid()).options(num_cpus=1).remote())
    found = listeners(process_tree(os.getpid()))
    gcs = ray.get_runtime_context().gcs_address
    stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(grpc.insecure_channel(gcs))
    try:
        stub.GetAllNodeInfo(gcs_service_pb2.GetAllNodeInfoRequest(), timeout=20)
        unauthenticated = "accepted"
    except grpc.RpcError as err:
        unauthenticated = err.code().name
    token_in_env = bool(os.environ.get("RAY_AUTH_TOKEN"))
    stop_local_ray()
    print(json.dumps({"worker": pid, "listeners": found, "gcs": gcs, "unauthenticated": unauthenticated,
                      "token_in_env": token_in_env, "token_after_stop": os.environ.get("RAY_AUTH_TOKEN")}))
""")


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    path = os.pathsep.join([str(REPO), str(REPO / "tests")])     # the driver imports the _listeners helper
    return env | {"PYTHONPATH": path, "RAY_AUTH_MODE": "disabled", "HOME": extra.pop("home")} | extra


def test_loopback_classification():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("192.0.2.2")


def test_local_ray_fleet_listens_on_loopback_only_and_requires_its_token(tmp_path):
    out = subprocess.run([sys.executable, "-c", _RAY_DRIVER], cwd=REPO, env=_env(home=str(tmp_path)),
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    names = {name for _, name, _, _ in result["listeners"]}
    assert {"gcs_server", "raylet"} <= names, result["listeners"]       # the servers were seen
    assert result["worker"] in {pid for pid, *_ in result["listeners"]}   # and the worker's gRPC server
    assert exposed(result["listeners"]) == []
    assert result["gcs"].startswith("127.0.0.1:")
    assert result["unauthenticated"] == "UNAUTHENTICATED"
    assert result["token_in_env"] and result["token_after_stop"] is None
    assert not (tmp_path / ".ray" / "auth_token").exists()              # the token never touched a file


def _listeners_of_stopped_job(proc: subprocess.Popen, timeout: float = 300) -> list:
    """Wait until a rank of ``proc``'s tree has stopped itself (LDISC_FAULT_STOP_AT_STEP), list the tree's
    listeners, then kill the tree."""
    import time

    import psutil

    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            tree = process_tree(proc.pid)
            if any(p.status() == psutil.STATUS_STOPPED for p in tree if p.is_running()):
                return listeners(tree)
            time.sleep(0.2)
        raise AssertionError(f"the job did not reach the stop step (rc={proc.poll()})")
    finally:
        for p in reversed(process_tree(proc.pid)) if proc.poll() is None else []:
            p.kill()
        proc.wait(timeout=60)


def _train_args(run_dir: Path) -> list[str]:
    from ldisc.train.env import free_port
    from _train_helpers import TINY

    return [*TINY, f"run_dir={run_dir}", "train.stage1_steps=3", "train.stage2_steps=0", f"metrics.port={free_port()}"]


def test_single_process_pretraining_listens_on_loopback_only(tmp_path):
    from _train_helpers import cli_env

    proc = subprocess.Popen([sys.executable, "-m", "ldisc.train.cli", *_train_args(tmp_path)], cwd=REPO,
                            env=cli_env(LDISC_FAULT_STOP_AT_STEP="2"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    found = _listeners_of_stopped_job(proc)
    assert found, "no listener seen (the metrics server at least listens)"
    assert exposed(found) == []


@pytest.mark.slow
def test_two_process_pretraining_listens_on_loopback_only(tmp_path):
    from ldisc.train.env import free_port
    from _train_helpers import cli_env, start_torchrun

    proc = start_torchrun(_train_args(tmp_path), free_port(), env=cli_env(LDISC_FAULT_STOP_AT_STEP="2"))
    found = _listeners_of_stopped_job(proc)
    assert {name for _, name, _, _ in found} >= {"pt_elastic"}            # torchrun's rendezvous store was seen
    assert exposed(found) == []
