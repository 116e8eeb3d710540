"""``ldisc-launch ... --target k8s``: every rendered object of every kind validates strictly (core kinds
with kubernetes-validate against 1.29 and the newest bundled version, operator kinds against their CRDs),
passes the semantic checks, and the checks themselves catch what they are for."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from launcher.cli import main
from launcher.k8s.render import compose_launch, render
from launcher.validate import CRD_KINDS, crd_dir, newest_k8s_version, semantic_problems, validate_object

REPO = Path(__file__).resolve().parents[1]
VERSIONS = ("1.29", newest_k8s_version())
S3 = ["launch.storage.pvc=null", "launch.storage.s3_url=s3://ldisc/data", "launch.storage.s3_endpoint=https://s3.example",
      "launch.storage.secret=ldisc-s3", "launch.storage.patient_key_secret=ldisc-deid"]
INGEST = ["launch.ingest.source=/data/drop/h7", "launch.ingest.site=h7", "launch.ingest.modality=fundus"]
CASES = {
    "pretrain-job": ("pretrain", ["launch.nodes=4", "launch.gpus_per_node=8"]),
    "pretrain-job-s3": ("pretrain", ["launch.nodes=3", "launch.k8s.kind=job", *S3,
                                     "launch.node_selector={pool: gpu}",
                                     "launch.tolerations=[{key: gpu, operator: Exists, effect: NoSchedule}]"]),
    "pretrain-pytorchjob": ("pretrain", ["launch.nodes=4", "launch.gpus_per_node=8", "launch.k8s.kind=pytorchjob",
                                         "launch.min_nodes=2", "engine.zero_stage=2"]),
    "pretrain-trainjob": ("pretrain", ["launch.nodes=2", "launch.gpus_per_node=4", "launch.k8s.kind=trainjob", *S3]),
    "ingest-job": ("ingest", [*INGEST, *S3]),
    "ingest-cronjob": ("ingest", [*INGEST, "launch.schedule='*/30 * * * *'"]),
    "eval-rayjob": ("eval", ["launch.ray.worker_replicas=3", "launch.ray.worker_gpus=1", "seeds=[0,1]",
                             "tasks=[paper]", "checkpoints=[random,/data/runs/a/checkpoints/step_0001000]"]),
}
SECRET_VALUE = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"


def _render(case: str) -> tuple[list[dict], dict]:
    entry, overrides = CASES[case]
    ln = compose_launch(entry, [*overrides, f"launch.name=t-{case}"])
    return render(ln), ln.launch


@pytest.fixture(scope="module")
def rendered() -> dict[str, tuple[list[dict], dict]]:
    return {case: _render(case) for case in CASES}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("case", list(CASES))
def test_every_object_validates_strictly(rendered, case, version):
    objects, _ = rendered[case]
    if any(o["kind"] in CRD_KINDS for o in objects) and not crd_dir().is_dir():
        pytest.skip(f"CRD schemas not found at {crd_dir()} (set LDISC_CRD_DIR to ../shared/crds)")
    errors = [e for o in objects for e in validate_object(o, version)]
    assert errors == []


@pytest.mark.parametrize("case", list(CASES))
def test_semantic_checks_hold_and_labels_find_every_object(rendered, case):
    objects, launch = rendered[case]
    nodes = launch["nodes"] if case.startswith("pretrain") else None
    assert semantic_problems(objects, nodes=nodes) == []
    for obj in objects:
        if obj["kind"] == "ClusterTrainingRuntime":
            continue                                   # a platform object shared by TrainJobs
        assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == f"t-{case}"
        assert obj["metadata"]["labels"]["app.kubernetes.io/component"] == CASES[case][0]


def test_indexed_job_layout(rendered):
    objects, _ = rendered["pretrain-job"]
    kinds = [o["kind"] for o in objects]
    assert kinds == ["ConfigMap", "Service", "Job", "PodMonitor"]
    svc, job, pm = objects[1], objects[2], objects[3]
    name = "t-pretrain-job"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 4
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["backoffLimit"] == 3
    pod = job["spec"]["template"]["spec"]
    assert pod["subdomain"] == svc["metadata"]["name"] == name and svc["spec"]["clusterIP"] == "None"
    cmd = pod["containers"][0]["command"]
    assert cmd[cmd.index("--rdzv-endpoint") + 1] == f"{name}-0.{name}.ldisc.svc:29400"
    assert cmd[cmd.index("--rdzv-backend") + 1] == "c10d" and cmd[cmd.index("--nproc-per-node") + 1] == "8"
    assert {"train.resume=auto", "metrics.addr=0.0.0.0", f"run_dir=/data/runs/{name}"} <= set(cmd)
    res = pod["containers"][0]["resources"]
    assert res["limits"]["nvidia.com/gpu"] == res["requests"]["nvidia.com/gpu"] == "8"
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"
    assert [e["port"] for e in pm["spec"]["podMetricsEndpoints"]] == [f"metrics-{r}" for r in range(8)]
    assert [p["containerPort"] for p in pod["containers"][0]["ports"]][:8] == list(range(9400, 9408))
    assert pm["spec"]["selector"]["matchLabels"].items() <= job["spec"]["template"]["metadata"]["labels"].items()
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert rules[0]["action"] == "FailJob" and rules[0]["onExitCodes"]["values"] == [2]
    cm = yaml.safe_load(objects[0]["data"]["pretrain.yaml"])
    assert cm["train"]["resume"] == "auto" and cm["metrics"]["addr"] == "0.0.0.0"   # the composed config


def test_pytorchjob_trainjob_ingest_eval_layouts(rendered):
    pj = rendered["pretrain-pytorchjob"][0][1]
    assert pj["spec"]["elasticPolicy"] == {"rdzvBackend": "c10d", "rdzvPort": 29400, "minReplicas": 2,
                                           "maxReplicas": 4, "maxRestarts": 3, "nProcPerNode": 8}
    assert pj["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 4
    assert "engine.zero_stage=2" in pj["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["command"]
    runtime, tj = rendered["pretrain-trainjob"][0][1:3]
    assert tj["spec"]["runtimeRef"]["name"] == runtime["metadata"]["name"] == "ldisc-torch"
    assert tj["spec"]["trainer"]["numNodes"] == 2 and tj["spec"]["trainer"]["numProcPerNode"] == 4
    cron = rendered["ingest-cronjob"][0][1]
    assert cron["kind"] == "CronJob" and cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert cron["spec"]["schedule"] == "*/30 * * * *"
    job = rendered["ingest-job"][0][1]
    cmd = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert cmd[:4] == ["python", "-m", "sharding.cli", "ingest"] and "s3://ldisc/data" in cmd
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["LDISC_PATIENT_KEY_SECRET"]["valueFrom"]["secretKeyRef"]["name"] == "ldisc-deid"
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "ldisc-s3"
    ray = rendered["eval-rayjob"][0][1]
    assert ray["spec"]["entrypoint"].startswith("python -m ldisc.eval.cli 'seeds=[0,1]' 'tasks=[paper]'")
    assert ray["spec"]["shutdownAfterJobFinishes"] is True and ray["spec"]["ttlSecondsAfterFinished"] == 3600
    workers = ray["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert workers["replicas"] == 3
    assert workers["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def _first(objects, kind):
    return next(o for o in objects if o["kind"] == kind)


def _pod(objects):
    return _first(objects, "Job")["spec"]["template"]["spec"]


BREAKAGES = {
    "selector": (lambda o: _first(o, "Service")["spec"]["selector"].update({"app.kubernetes.io/instance": "other"}),
                 "selector"),
    "not headless": (lambda o: _first(o, "Service")["spec"].update(clusterIP="10.0.0.1"), "not headless"),
    "rdzv host": (lambda o: _pod(o)["containers"][0]["command"].__setitem__(
        _pod(o)["containers"][0]["command"].index("--rdzv-endpoint") + 1, "somewhere:29400"), "rendezvous host"),
    "parallelism": (lambda o: _first(o, "Job")["spec"].update(parallelism=2), "completions"),
    "mount without volume": (lambda o: _pod(o)["volumes"].pop(), "has no volume"),
    "int quantity": (lambda o: _pod(o)["containers"][0]["resources"]["requests"].update(cpu=8), "string quantity"),
    "root": (lambda o: _pod(o)["securityContext"].update(runAsUser=0), "non-root"),
    "capabilities": (lambda o: _pod(o)["containers"][0]["securityContext"].update(capabilities={}), "drop ALL"),
    "init container": (lambda o: _pod(o).update(initContainers=[{"name": "init", "image": "busybox"}]),
                       "container init: readOnlyRootFilesystem"),
    "secret literal": (lambda o: _pod(o)["containers"][0]["env"].append(
        {"name": "AWS_SECRET_ACCESS_KEY", "value": SECRET_VALUE}), "literal value"),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_semantic_checks_catch_breakage(rendered, breakage):
    objects = copy.deepcopy(rendered["pretrain-job"][0])
    mutate, expected = BREAKAGES[breakage]
    mutate(objects)
    problems = semantic_problems(objects, nodes=4, secret_values=[SECRET_VALUE])
    assert any(expected in p for p in problems), problems


def test_strict_validation_rejects_unknown_fields_and_kinds(rendered):
    job = copy.deepcopy(rendered["pretrain-job"][0][2])
    job["spec"]["template"]["spec"]["containers"][0]["gpus"] = 8
    assert any("'gpus' was unexpected" in e for e in validate_object(job))
    cm = copy.deepcopy(rendered["pretrain-job"][0][0])
    cm["data"]["n"] = 3
    assert validate_object(cm) != []
    assert "Couldn't find schema" in validate_object({"apiVersion": "v1", "kind": "Widget", "metadata": {"name": "w"}})[0]
    if not crd_dir().is_dir():
        pytest.skip(f"CRD schemas not found at {crd_dir()}")
    pj = copy.deepcopy(rendered["pretrain-pytorchjob"][0][1])
    pj["spec"]["elasticPolicy"]["rdzvBackendd"] = "c10d"
    assert any("rdzvBackendd" in e for e in validate_object(pj))
    pj = copy.deepcopy(rendered["pretrain-pytorchjob"][0][1])
    pj["spec"]["elasticPolicy"]["minReplicas"] = "two"
    assert validate_object(pj) != []


def test_cli_dry_run_stream_out_dir_and_no_secret_in_any_byte(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_VALUE)
    argv = ["pretrain", "--target", "k8s", "--dry-run", "--out", str(tmp_path), "--name", "Run_A.1",
            "launch.nodes=2", *S3]
    assert main(argv) == 0
    stream = capsys.readouterr().out
    objects = list(yaml.safe_load_all(stream))
    assert [o["kind"] for o in objects] == ["ConfigMap", "Service", "Job", "PodMonitor"]
    assert {o["metadata"]["name"] for o in objects} == {"run-a-1", "run-a-1-config"}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{o['kind'].lower()}-{o['metadata']['name']}.yaml"
                                                                for o in objects)
    written = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert SECRET_VALUE.encode() not in written and SECRET_VALUE not in stream
    assert "secretKeyRef" in stream
    assert semantic_problems(objects, nodes=2, secret_values=[SECRET_VALUE]) == []


def test_long_names_fit_indexed_job_hostnames(capsys):
    assert main(["pretrain", "--target", "k8s", "--dry-run", "--name", "x" * 80, "launch.nodes=100"]) == 0
    objects = list(yaml.safe_load_all(capsys.readouterr().out))
    job = _first(objects, "Job")
    assert len(job["metadata"]["name"]) <= 40 and len(f"{job['metadata']['name']}-99") <= 63
    assert semantic_problems(objects, nodes=100) == []


@pytest.mark.parametrize("argv, message", [
    (["pretrain", "--target", "k8s", "--dry-run", "no_such_key=1"], "no_such_key"),
    (["pretrain", "--target", "k8s", "--dry-run", "launch.k8s.kind=mpijob"], "launch.k8s.kind"),
    (["ingest", "--target", "k8s", "--dry-run", "launch.ingest.site=h"], "launch.ingest.source"),
    (["pretrain", "--target", "ray", "--address", "http://127.0.0.1:8265"], "pretrain runs with"),
    (["eval", "--target", "ray"], "--address"),
    (["pretrain", "--target", "k8s", "--name", "9lives", "--dry-run"], "start with a letter"),
    (["pretrain", "--target", "local", "--out", "x"], "--out"),
    (["pretrain", "--target", "k8s", "--dry-run", "notanoverride"], "key=value"),
])
def test_cli_misuse_is_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_console_entry_exit_status_in_a_real_process():
    proc = subprocess.run([sys.executable, "-m", "launcher.cli", "eval", "--target", "ray"], cwd=REPO,
                          capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO),
                                                               "HOME": "/tmp"}, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("ldisc-launch: --target ray needs --address"), proc.stderr


def test_ray_and_local_dry_runs_show_the_command(capsys):
    assert main(["eval", "--target", "ray", "--address", "http://127.0.0.1:8265", "--dry-run", "--name", "ev1",
                 "tasks=[paper]", "seeds=[0]"]) == 0
    assert capsys.readouterr().out.strip() == ("ray job submit --address http://127.0.0.1:8265 --submission-id ev1 -- "
                                               "python -m ldisc.eval.cli 'tasks=[paper]' 'seeds=[0]' ray.address=auto")
    assert main(["pretrain", "--target", "local", "--dry-run", "launch.procs_per_node=3", "run_dir=runs/x"]) == 0
    argv = capsys.readouterr().out.split()
    assert argv[1:3] == ["-m", "ldisc.train.torchrun_loopback"] and argv[argv.index("--nproc-per-node") + 1] == "3"
    assert argv[-4:] == ["-m", "ldisc.train.cli", "train.resume=auto", "run_dir=runs/x"]   # a restart resumes
    assert argv[argv.index("--max-restarts") + 1] == "3"                                     # launch.max_restarts
    assert main(["ingest", "--target", "local", "--dry-run", *INGEST, "launch.ingest.dataset=/d"]) == 0
    assert capsys.readouterr().out.split()[:6] == ["ldisc-shard", "ingest", "/data/drop/h7", "--dataset", "/d", "--site"]


@pytest.mark.skipif(not crd_dir().is_dir(), reason=f"no CRDs in {crd_dir()} (PyTorchJob schema)")
def test_done_when_dry_run_then_apply_then_status_through_the_cli(tmp_path, capsys):
    """The issue's path: dry-run → the same objects applied by the CLI to a (fake, validating) API server →
    ``status`` follows them. The server is tests/fake_kube.py, driven through the official client."""
    from fake_kube import FakeKube

    args = ["pretrain", "--target", "k8s", "--name", "ld-done", "--namespace", "team-done",
            "launch.nodes=4", "launch.gpus_per_node=8", "launch.k8s.kind=pytorchjob"]
    assert main([*args, "--dry-run"]) == 0
    shown = list(yaml.safe_load_all(capsys.readouterr().out))
    with FakeKube() as kube:
        kubeconfig = str(kube.write_kubeconfig(tmp_path / "kubeconfig"))
        assert main([*args, "--kubeconfig", kubeconfig]) == 0
        out = capsys.readouterr().out
        assert "PyTorchJob/ld-done created" in out and "ConfigMap/ld-done-config created" in out
        stored = kube.get("PyTorchJob", "ld-done", "team-done")
        assert stored["spec"] == next(o for o in shown if o["kind"] == "PyTorchJob")["spec"]
        kube.set_status("PyTorchJob", "ld-done", "team-done", {"conditions": [
            {"type": "Running", "status": "True", "reason": "PyTorchJobRunning", "message": "running"}]})
        assert main(["status", "ld-done", "--namespace", "team-done", "--kubeconfig", kubeconfig]) == 0
        assert "Running" in capsys.readouterr().out
        assert main(["status", "nope", "--namespace", "team-done", "--kubeconfig", kubeconfig]) == 1
