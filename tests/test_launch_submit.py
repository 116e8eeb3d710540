"""The submission path: rendered launches applied with the official ``kubernetes`` client to a fake API
server on 127.0.0.1 (tests/fake_kube.py, validating with launcher.validate), then followed with
``status``/``logs``/``delete`` through the Python API, the ``ldisc-launch`` CLI and kubectl."""
from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fake_kube import FakeKube

from launcher.k8s.render import compose_launch, render
from launcher.kube import KubeError, apply_objects, delete_job, job_logs, job_status
from launcher.validate import crd_dir
from ldisc.train.env import free_port

REPO = Path(__file__).resolve().parents[1]
INSTANCE = "app.kubernetes.io/instance"


@pytest.fixture(scope="module")
def kube(tmp_path_factory):
    with FakeKube() as server:
        server.kubeconfig = str(server.write_kubeconfig(tmp_path_factory.mktemp("kube") / "kubeconfig"))
        yield server


def _objects(name: str, *overrides: str) -> list[dict]:
    return render(compose_launch("pretrain", [f"launch.name={name}", "launch.nodes=2", "launch.k8s.pod_monitor=false",
                                              *overrides]))


def _pods(kube: FakeKube, name: str, ns: str, phases: list[str], restarts: list[int], **kw) -> None:
    job = kube.get("Job", name, ns)
    labels = job["spec"]["template"]["metadata"]["labels"]
    for i, (phase, r) in enumerate(zip(phases, restarts)):
        kube.add_pod(f"{name}-{i}-x{i}", ns, labels, phase, r, owner=job, metrics_port=9400,
                     log=f"rank {i} starting\nstep {10 * (i + 1)} loss 1.5\n", **kw)


def _cli(kube: FakeKube, *args: str) -> subprocess.CompletedProcess:
    env = {"KUBECONFIG": kube.kubeconfig, "PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "launcher.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)


def test_apply_creates_then_reapply_is_idempotent(kube):
    objects = _objects("ldisc-apply")
    assert apply_objects(objects, "team-a", kube.kubeconfig) == [
        "ConfigMap/ldisc-apply-config created", "Service/ldisc-apply created", "Job/ldisc-apply created"]
    stored = kube.get("Job", "ldisc-apply", "team-a")
    assert stored["metadata"]["namespace"] == "team-a"
    assert stored["spec"]["completions"] == stored["spec"]["parallelism"] == 2
    assert apply_objects(objects, "team-a", kube.kubeconfig) == [
        "ConfigMap/ldisc-apply-config exists (left unchanged)", "Service/ldisc-apply exists (left unchanged)",
        "Job/ldisc-apply exists (left unchanged)"]
    posts = [p for m, p in kube.requests if m == "POST" and "team-a" in p]
    assert len(posts) == 6 and "/apis/batch/v1/namespaces/team-a/jobs" in posts


def test_invalid_object_gets_422_with_the_servers_reason(kube):
    job = copy.deepcopy(next(o for o in _objects("ldisc-bad") if o["kind"] == "Job"))
    job["spec"]["template"]["spec"]["containers"][0]["bogusField"] = 1       # strict: unknown fields fail
    with pytest.raises(KubeError) as err:
        apply_objects([job], "team-a", kube.kubeconfig)
    assert err.value.status == 422
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("create Job/ldisc-bad: 422")
    assert "spec.template.spec.containers.0" in msg and "bogusField" in msg
    assert kube.get("Job", "ldisc-bad", "team-a") is None


def test_status_follows_pending_running_succeeded(kube):
    ns, name = "team-b", "ldisc-run"
    apply_objects(_objects(name), ns, kube.kubeconfig)
    assert job_status(name, ns, kube.kubeconfig).phase == "Pending"
    _pods(kube, name, ns, ["Pending", "Pending"], [0, 0])
    st = job_status(name, ns, kube.kubeconfig)
    assert st.phase == "Pending" and [p.phase for p in st.pods] == ["Pending", "Pending"]
    assert st.checkpoint_step is None

    for i in range(2):
        kube.get("Pod", f"{name}-{i}-x{i}", ns)["status"]["phase"] = "Running"
    kube.get("Pod", f"{name}-1-x1", ns)["status"]["containerStatuses"][0]["restartCount"] = 3
    kube.set_status("Job", name, ns, {"active": 2, "startTime": "2026-01-01T00:00:00Z"})
    kube.set_proxy(ns, f"{name}-0-x0", 9400, "metrics",
                   '# TYPE ldisc_train_checkpoint_step gauge\nldisc_train_checkpoint_step{rank="0"} 200.0\n')
    kube.set_proxy(ns, f"{name}-1-x1", 9400, "metrics", 'ldisc_train_checkpoint_step{rank="2"} 100.0\n')
    st = job_status(name, ns, kube.kubeconfig)
    assert st.phase == "Running"
    assert [(p.phase, p.restarts) for p in st.pods] == [("Running", 0), ("Running", 3)] and st.restarts == 3
    assert st.checkpoint_step == 200 and f"{name}-0-x0:9400" in st.checkpoint_source
    text = st.render()
    assert f"{name}  namespace={ns}  phase=Running" in text and "restarts=3" in text and "checkpoint: step 200" in text

    kube.set_status("Job", name, ns, {"succeeded": 2, "conditions": [
        {"type": "SuccessCriteriaMet", "status": "True"}, {"type": "Complete", "status": "True"}]})
    for i in range(2):
        kube.get("Pod", f"{name}-{i}-x{i}", ns)["status"]["phase"] = "Succeeded"
    st = job_status(name, ns, kube.kubeconfig)
    assert st.phase == "Succeeded" and "Complete=True" in st.render()


def test_status_reports_failure_reason_and_crashing_pods(kube):
    ns, name = "team-c", "ldisc-fail"
    apply_objects(_objects(name), ns, kube.kubeconfig)
    _pods(kube, name, ns, ["Running", "Running"], [0, 4], waiting_reason="CrashLoopBackOff")
    kube.set_status("Job", name, ns, {"failed": 4, "conditions": [
        {"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded",
         "message": "Job has reached the specified backoff limit"},
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
         "message": "Job has reached the specified backoff limit"}]})
    st = job_status(name, ns, kube.kubeconfig)
    assert st.phase == "Failed"
    failed = next(c for c in st.workloads[0].conditions if c.type == "Failed")
    assert (failed.reason, failed.message) == ("BackoffLimitExceeded", "Job has reached the specified backoff limit")
    assert [p.reason for p in st.pods] == ["CrashLoopBackOff", "CrashLoopBackOff"] and st.restarts == 4
    assert st.checkpoint_step is None and "503" in st.checkpoint_source     # pods serve no metrics
    assert "Failed=True  BackoffLimitExceeded: Job has reached the specified backoff limit" in st.render()


def test_logs_of_every_pod_prefixed(kube):
    ns, name = "team-d", "ldisc-logs"
    apply_objects(_objects(name), ns, kube.kubeconfig)
    _pods(kube, name, ns, ["Running", "Running"], [0, 0])
    assert list(job_logs(name, ns, kube.kubeconfig)) == [
        f"[{name}-0-x0] rank 0 starting", f"[{name}-0-x0] step 10 loss 1.5",
        f"[{name}-1-x1] rank 1 starting", f"[{name}-1-x1] step 20 loss 1.5"]
    assert list(job_logs(name, ns, kube.kubeconfig, tail_lines=1)) == [
        f"[{name}-0-x0] step 10 loss 1.5", f"[{name}-1-x1] step 20 loss 1.5"]
    followed = list(job_logs(name, ns, kube.kubeconfig, follow=True))
    assert sorted(followed) == sorted(job_logs(name, ns, kube.kubeconfig))


def test_watch_streams_the_current_objects(kube):
    from kubernetes import client, watch

    from launcher.kube import api_client

    ns, name = "team-w", "ldisc-watch"
    apply_objects(_objects(name), ns, kube.kubeconfig)
    _pods(kube, name, ns, ["Pending", "Running"], [0, 0])
    core = client.CoreV1Api(api_client(kube.kubeconfig))
    events = list(watch.Watch().stream(core.list_namespaced_pod, ns, label_selector=f"{INSTANCE}={name}",
                                       timeout_seconds=5))
    assert [(e["type"], e["object"].metadata.name, e["object"].status.phase) for e in events] == [
        ("ADDED", f"{name}-0-x0", "Pending"), ("ADDED", f"{name}-1-x1", "Running")]


def test_delete_removes_every_labelled_object(kube):
    ns, name = "team-e", "ldisc-del"
    apply_objects(_objects(name), ns, kube.kubeconfig)
    apply_objects(_objects("ldisc-other"), ns, kube.kubeconfig)
    _pods(kube, name, ns, ["Running", "Running"], [0, 0])
    assert sorted(delete_job(name, ns, kube.kubeconfig)) == [
        "ConfigMap/ldisc-del-config deleted", "Job/ldisc-del deleted", "Service/ldisc-del deleted"]
    deletes = [p for m, p in kube.requests if m == "DELETE" and f"/namespaces/{ns}/" in p]
    assert len(deletes) == 3 and all("propagationPolicy=Background" in p for p in deletes)
    assert kube.get("Job", name, ns) is None and kube.get("Pod", f"{name}-0-x0", ns) is None   # owner GC
    assert kube.get("Job", "ldisc-other", ns) is not None
    with pytest.raises(KubeError, match=f"no job labelled {INSTANCE}={name} in namespace {ns}"):
        job_status(name, ns, kube.kubeconfig)
    with pytest.raises(KubeError, match="no objects labelled"):
        delete_job(name, ns, kube.kubeconfig)


@pytest.mark.skipif(not crd_dir().is_dir(), reason=f"no CRDs in {crd_dir()} (PyTorchJob schema)")
def test_pytorchjob_conditions_through_custom_objects(kube):
    ns, name = "team-f", "ldisc-ptj"
    objects = _objects(name, "launch.k8s.kind=pytorchjob", "launch.k8s.pod_monitor=true")
    lines = apply_objects(objects, ns, kube.kubeconfig)
    assert f"PyTorchJob/{name} created" in lines and f"PodMonitor/{name} created" in lines
    kube.set_status("PyTorchJob", name, ns, {"conditions": [
        {"type": "Created", "status": "True", "reason": "PyTorchJobCreated"},
        {"type": "Running", "status": "True", "reason": "PyTorchJobRunning"}]})
    assert job_status(name, ns, kube.kubeconfig).phase == "Running"
    kube.set_status("PyTorchJob", name, ns, {"conditions": [
        {"type": "Running", "status": "False"},
        {"type": "Failed", "status": "True", "reason": "PyTorchJobFailed", "message": "worker 1 exited with 137"}]})
    st = job_status(name, ns, kube.kubeconfig)
    assert st.phase == "Failed" and "PyTorchJobFailed: worker 1 exited with 137" in st.render()
    assert f"PodMonitor/{name} deleted" in delete_job(name, ns, kube.kubeconfig)


def test_unreachable_api_is_one_line(tmp_path):
    server = FakeKube().start()
    path = server.write_kubeconfig(tmp_path / "kubeconfig")
    server.stop()
    with pytest.raises(KubeError, match=r"cannot reach the Kubernetes API at http://127\.0\.0\.1:\d+ .*refused"):
        job_status("ldisc-x", "default", str(path))
    with pytest.raises(KubeError, match="cannot load Kubernetes config"):
        job_status("ldisc-x", "default", str(tmp_path / "missing"))


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kubectl_lists_what_was_created(kube, tmp_path):
    ns, name = "team-g", "ldisc-kubectl"
    apply_objects(_objects(name), ns, kube.kubeconfig)
    out = subprocess.run(["kubectl", "--kubeconfig", kube.kubeconfig, "--cache-dir", str(tmp_path), "get",
                          "jobs,services,configmaps", "-n", ns, "-l", f"{INSTANCE}={name}", "-o", "name"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert sorted(out.stdout.split()) == sorted(
        [f"job.batch/{name}", f"service/{name}", f"configmap/{name}-config"])


def test_cli_status_logs_delete(kube):
    if not (REPO / "launcher" / "cli.py").exists():
        pytest.skip("launcher/cli.py not there yet")
    ns, name = "team-h", "ldisc-cli"
    apply_objects(_objects(name), ns, kube.kubeconfig)
    _pods(kube, name, ns, ["Running", "Running"], [1, 0])
    kube.set_status("Job", name, ns, {"active": 2})
    st = _cli(kube, "status", name, "--namespace", ns)
    assert st.returncode == 0, st.stderr
    assert f"{name}  namespace={ns}  phase=Running" in st.stdout and "restarts=1" in st.stdout
    logs = _cli(kube, "logs", name, "--namespace", ns)
    assert logs.returncode == 0, logs.stderr
    assert f"[{name}-1-x1] step 20 loss 1.5" in logs.stdout.splitlines()
    gone = _cli(kube, "delete", name, "--namespace", ns)
    assert gone.returncode == 0 and f"Job/{name} deleted" in gone.stdout
    again = _cli(kube, "status", name, "--namespace", ns)
    assert again.returncode == 1 and len(again.stderr.strip().splitlines()) == 1 and name in again.stderr
    port = free_port()   # nothing listens there
    bad = subprocess.run([sys.executable, "-m", "launcher.cli", "status", name, "--namespace", ns],
                         cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin",
                              "KUBECONFIG": _closed_kubeconfig(kube, port)})
    assert bad.returncode == 1 and "cannot reach the Kubernetes API" in bad.stderr


def _closed_kubeconfig(kube: FakeKube, port: int) -> str:
    path = Path(kube.kubeconfig).with_name("closed.kubeconfig")
    path.write_text(Path(kube.kubeconfig).read_text().replace(kube.url, f"http://127.0.0.1:{port}"))
    return str(path)


def test_trainjob_pods_found_through_their_jobset_label(kube):
    """The trainer's JobSet makes a TrainJob's pods from the runtime's template, with the JobSet's label only:
    status and logs still find them."""
    ns, name = "team-t", "ldisc-tj"
    lines = apply_objects(_objects(name, "launch.k8s.kind=trainjob"), ns, kube.kubeconfig)
    assert f"TrainJob/{name} created" in lines
    for i in range(2):
        kube.add_pod(f"{name}-node-0-{i}-x", ns, {"jobset.sigs.k8s.io/jobset-name": name}, "Running", i,
                     metrics_port=9400, log=f"rank {i} up\n")
    st = job_status(name, ns, kube.kubeconfig)
    assert [(p.name, p.restarts) for p in st.pods] == [(f"{name}-node-0-0-x", 0), (f"{name}-node-0-1-x", 1)]
    assert list(job_logs(name, ns, kube.kubeconfig)) == [f"[{name}-node-0-0-x] rank 0 up",
                                                          f"[{name}-node-0-1-x] rank 1 up"]
