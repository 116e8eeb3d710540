"""The Ray Jobs API path against a real local Ray head (``ray start --head``, dashboard on 127.0.0.1).

The head runs in its own session and is stopped by signalling that process group (not ``ray stop``, which
would stop every Ray on this shared machine)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from launcher import rayjobs
from ldisc.train.env import free_port

REPO = Path(__file__).resolve().parents[1]
pytest.importorskip("aiohttp", reason="the Ray dashboard (Jobs API) needs ray[default]")


def _start_head(tmp: str, env: dict) -> tuple[subprocess.Popen, str]:
    """``ray start --head --block`` in its own session → (process, dashboard address) once a probe job
    succeeded, or (process, "") where ``ray start`` gave up (its raylet wait is a fixed 30 s, which a loaded
    machine can exceed)."""
    dash = free_port()
    log = Path(tmp) / f"head-{dash}.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
                                 f"--port={free_port()}", "--node-ip-address=127.0.0.1",
                                 "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--include-dashboard=true",
                                 "--num-cpus=1", f"--temp-dir={tmp}", "--disable-usage-stats"],
                                env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        if "Ray runtime started" in log.read_text():
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{dash}/api/version", timeout=5).read()
                break
            except OSError:
                pass
        time.sleep(0.5)
    else:
        return proc, ""
    address = f"http://127.0.0.1:{dash}"
    try:    # ready = a job runs (the raylet can still die waiting for its agents after "started")
        if rayjobs.wait(address, rayjobs.submit(address, "true"), timeout_s=120, poll_s=0.5) == "SUCCEEDED":
            return proc, address
    except rayjobs.RayJobError as e:
        with open(log, "a") as fh:
            fh.write(f"\nprobe job: {e}\n")
    return proc, ""


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)      # `ray start --block` often outlives SIGTERM: then the whole group is killed
            return
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)     # whatever of the group is left
    except ProcessLookupError:
        pass
    proc.wait()


@pytest.fixture(scope="module")
def ray_head():
    tmp = tempfile.mkdtemp(prefix="lr", dir="/tmp")     # short: Ray's unix socket paths must fit 107 bytes
    env = os.environ | {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
                        "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO)}
    try:
        for _ in range(2):
            proc, address = _start_head(tmp, env)
            if address:
                break
            _stop(proc)
        else:
            last = [(log.read_text().strip().splitlines() or ["(empty)"])[-1] for log in Path(tmp).glob("head-*.log")]
            pytest.fail("Ray head did not come up twice: " + " | ".join(last))
        try:
            yield address
        finally:
            _stop(proc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_entrypoint_succeeds_with_runtime_env_and_logs(ray_head):
    code = "import os, sys; print('ldisc-ray-ok', os.environ['LDISC_MARK'], sys.version_info[0])"
    job = rayjobs.submit(ray_head, f"{sys.executable} -c \"{code}\"", {"env_vars": {"LDISC_MARK": "42"}},
                         submission_id="ldisc-ray-ok-1")
    assert job == "ldisc-ray-ok-1"
    assert rayjobs.wait(ray_head, job, timeout_s=180, poll_s=0.5) == "SUCCEEDED"
    assert rayjobs.status(ray_head, job) == "SUCCEEDED"
    assert "ldisc-ray-ok 42 3" in rayjobs.logs(ray_head, job).splitlines()


def test_failing_entrypoint_is_failed(ray_head):
    job = rayjobs.submit(ray_head, f"{sys.executable} -c \"print('about to fail'); raise SystemExit(3)\"")
    assert rayjobs.wait(ray_head, job, timeout_s=180, poll_s=0.5) == "FAILED"
    assert "about to fail" in rayjobs.logs(ray_head, job)
    with pytest.raises(rayjobs.RayJobError, match=f"^submit: .*{job}.* already exists") as err:
        rayjobs.submit(ray_head, "true", submission_id=job)      # submission ids are unique
    assert "\n" not in str(err.value)


def test_unknown_job_is_one_line(ray_head):
    with pytest.raises(rayjobs.RayJobError, match=r"^status of nope: .*404.*does not exist") as err:
        rayjobs.status(ray_head, "nope")
    assert "\n" not in str(err.value)


def test_unreachable_address_and_secrets_are_refused():
    address = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(rayjobs.RayJobError, match=f"^cannot reach the Ray dashboard at {address}"):
        rayjobs.status(address, "x")
    with pytest.raises(rayjobs.RayJobError, match="must be the dashboard URL"):
        rayjobs.status("127.0.0.1:8265", "x")
    with pytest.raises(rayjobs.RayJobError, match="refusing to put AWS_SECRET_ACCESS_KEY into runtime_env"):
        rayjobs.submit(address, "true", {"env_vars": {"AWS_SECRET_ACCESS_KEY": "abc", "OMP_NUM_THREADS": "1"}})


@pytest.mark.slow
def test_ldisc_eval_runs_as_a_ray_job(ray_head, tmp_path):
    """A tiny ``ldisc-eval`` (one synthetic task, random init, smoke protocol) joining the head's cluster."""
    out = tmp_path / "eval"
    args = ["protocol=smoke", "protocol.epochs_frozen=2", "data.max_test=6", "fleet.progress=false",
            "protocols=[frozen]", "seeds=[0]", "checkpoints=[random]", "tasks=[synth_idrid_disc@8]",
            f"out_dir={out}", "ray.address=auto"]
    job = rayjobs.submit(ray_head, " ".join([sys.executable, "-m", "ldisc.eval.cli", *args]),
                         {"env_vars": {"PYTHONPATH": str(REPO), "DS_BUILD_OPS": "0", "PYTHONUNBUFFERED": "1"}})
    state = rayjobs.wait(ray_head, job, timeout_s=500, poll_s=1)
    assert state == "SUCCEEDED", rayjobs.logs(ray_head, job)[-3000:]
    import pyarrow.parquet as pq

    rows = pq.read_table(out / "results.parquet").to_pylist()
    assert {(r["task"], r["protocol"]) for r in rows} == {("synth_idrid_disc@8", "frozen")}
