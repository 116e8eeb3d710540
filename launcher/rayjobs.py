"""Jobs on an existing Ray cluster through the Ray Jobs API (``ray.job_submission.JobSubmissionClient``).

``address`` is the cluster's dashboard, ``http://HOST:8265``. The client needs ``ray[default]``.

Secrets: nothing from this process's environment is copied into the job. ``runtime_env`` goes to the
cluster as given, and the cluster stores it and shows it in its dashboard and job list. So put no secret
in ``runtime_env["env_vars"]``: give the cluster's pods their credentials instead (Secrets mounted or
``secretKeyRef`` on the Ray pods). :func:`submit` refuses ``env_vars`` whose names look like
credentials unless ``allow_secret_env=True`` is passed explicitly.
"""
from __future__ import annotations

import re
import time

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
SECRET_NAME = re.compile(r"SECRET|PASSWORD|TOKEN|CREDENTIAL|ACCESS_KEY|PRIVATE_KEY|API_KEY", re.I)


class RayJobError(Exception):
    """A one-line, user-facing failure of the Ray Jobs API."""


def _short(e: BaseException) -> str:
    """One line: for a server-side traceback ("...status code 500: Traceback ..."), its final line."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    if not lines:
        return type(e).__name__
    if "Traceback (most recent call last)" in lines[0] and len(lines) > 1:
        # the client appends "." after the server's text: the exception line is the last real one
        last = next((ln for ln in reversed(lines) if re.match(r"^[\w.]+(Error|Exception)\b", ln)), lines[-1])
        return f"{lines[0].split('Traceback')[0].strip()} {last}"[:300]
    return " ".join(lines)[:300]


def _client(address: str):
    if not re.match(r"^https?://[^/\s:]+:\d+/?$", address or ""):
        raise RayJobError(f"Ray address must be the dashboard URL http://HOST:PORT, got {address!r}")
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError as e:
        raise RayJobError(f"the Ray Jobs client needs ray[default] ({_short(e)})") from None
    for attempt in range(3):        # a busy dashboard drops a connection now and then
        try:
            return JobSubmissionClient(address)
        except (ConnectionError, RuntimeError, OSError) as e:
            if attempt == 2:
                raise RayJobError(f"cannot reach the Ray dashboard at {address}: {_short(e)}") from None
            time.sleep(1.0)


def _call(address: str, what: str, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except (ConnectionError, OSError) as e:
        raise RayJobError(f"cannot reach the Ray dashboard at {address} ({what}): {_short(e)}") from None
    except RuntimeError as e:       # the client's HTTP failures, e.g. "Request failed with status code 404: ..."
        raise RayJobError(f"{what}: {_short(e)}") from None


def submit(address: str, entrypoint: str, runtime_env: dict | None = None, submission_id: str | None = None,
           allow_secret_env: bool = False, agent_wait_s: float = 60.0) -> str:
    """Submit ``entrypoint`` (a shell command run on the head node) → the job's submission id. A cluster
    that has just started answers "No available agent" until its dashboard agent is up: retried for
    ``agent_wait_s`` seconds."""
    runtime_env = dict(runtime_env or {})
    secret = [k for k in (runtime_env.get("env_vars") or {}) if SECRET_NAME.search(k)]
    if secret and not allow_secret_env:
        raise RayJobError(f"refusing to put {', '.join(secret)} into runtime_env env_vars (visible in the Ray "
                          f"dashboard); give the cluster its credentials, or pass allow_secret_env=True")
    client = _client(address)
    deadline = time.monotonic() + agent_wait_s
    while True:
        try:
            return _call(address, "submit", client.submit_job, entrypoint=entrypoint,
                         runtime_env=runtime_env or None, submission_id=submission_id)
        except RayJobError as e:
            if "No available agent" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def status(address: str, job_id: str) -> str:
    """PENDING, RUNNING, STOPPED, SUCCEEDED or FAILED."""
    return str(_call(address, f"status of {job_id}", _client(address).get_job_status, job_id).value)


def logs(address: str, job_id: str) -> str:
    """Everything the job's entrypoint wrote so far (stdout and stderr)."""
    return _call(address, f"logs of {job_id}", _client(address).get_job_logs, job_id)


def wait(address: str, job_id: str, timeout_s: float, poll_s: float = 1.0) -> str:
    """Block until the job is SUCCEEDED, FAILED or STOPPED → that status; RayJobError after ``timeout_s``."""
    client = _client(address)
    deadline = time.monotonic() + timeout_s
    while True:
        state = str(_call(address, f"status of {job_id}", client.get_job_status, job_id).value)
        if state in TERMINAL:
            return state
        if time.monotonic() > deadline:
            raise RayJobError(f"job {job_id} still {state} after {timeout_s:.0f} s")
        time.sleep(poll_s)
