"""Pretraining objects, by ``launch.k8s.kind``:

- ``job``: a ``batch/v1`` Indexed Job (completions = parallelism = nodes) and the headless Service that
  gives pod ``i`` the stable name ``<job>-<i>.<job>.<ns>.svc``; every pod runs torchrun with a c10d
  rendezvous on pod 0's name, ``podFailurePolicy`` + ``backoffLimit`` recreate failed pods, which resume
  from the newest checkpoint (``train.resume=auto``).
- ``pytorchjob``: a Kubeflow ``kubeflow.org/v1`` PyTorchJob with ``elasticPolicy`` (c10d, min/max nodes);
  the operator passes the rendezvous to torchrun through ``PET_*`` variables.
- ``trainjob``: a Kubeflow Trainer ``trainer.kubeflow.org/v1alpha1`` TrainJob referencing the
  ClusterTrainingRuntime of :func:`cluster_training_runtime` (kept in ``k8s/``).
"""
from __future__ import annotations

from launcher.local import TorchrunSpec, torchrun_command

from . import pod
from .common import TRAINJOB_POD_LABEL, labels, meta, pod_monitor, selector

COMPONENT = "pretrain"
RUNTIME_JOB = "node"          # the replicated job (and container) name Kubeflow Trainer's torch plugin fills in


def run_dir(name: str, launch: dict) -> str:
    """Checkpoints and logs: on the PVC when there is one (survives pod restarts), else the run emptyDir."""
    storage = launch["storage"]
    return f"{storage['mount_path']}/runs/{name}" if storage.get("pvc") else f"{pod.RUN_MOUNT}/{name}"


def pod_overrides(name: str, launch: dict, overrides: list[str]) -> list[str]:
    """What ``ldisc-pretrain`` runs with in a pod: the user's overrides, then the pinned ones."""
    return [*overrides, f"run_dir={run_dir(name, launch)}", "train.resume=auto",
            "metrics.addr=0.0.0.0", f"metrics.port={int(launch['metrics_port'])}"]


def metrics_ports(launch: dict) -> list[tuple[str, int]]:
    return [(f"metrics-{r}", int(launch["metrics_port"]) + r) for r in range(int(launch["procs_per_node"]))]


def _container(name: str, launch: dict, command: list[str], mounts: list[dict], cname: str,
               extra_ports: list[tuple[str, int]] = ()) -> dict:
    return pod.container(cname, launch, command, mounts, gpus=int(launch["gpus_per_node"]),
                         ports=[*metrics_ports(launch), *extra_ports])


def indexed_job(name: str, namespace: str, launch: dict, overrides: list[str], config_map: str) -> list[dict]:
    nodes, port = int(launch["nodes"]), int(launch["rdzv_port"])
    spec = TorchrunSpec(nproc=int(launch["procs_per_node"]), nnodes=nodes,
                        rdzv_endpoint=f"{name}-0.{name}.{namespace}.svc:{port}", rdzv_id=name,
                        max_restarts=int(launch["max_restarts"]))
    command = torchrun_command(spec, pod_overrides(name, launch, overrides), python="python")
    command[command.index("--node-rank") + 1] = "$(JOB_COMPLETION_INDEX)"
    vols, mounts = pod.volumes(launch, config_map)
    c = _container(name, launch, command, mounts, "trainer", [("rdzv", port)])
    c["env"].insert(0, {"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {
        "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}})
    pod_labels = labels(name, COMPONENT)
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta(name, namespace, COMPONENT),
           "spec": {"completionMode": "Indexed", "completions": nodes, "parallelism": nodes,
                    "backoffLimit": int(launch["max_restarts"]),
                    "podFailurePolicy": {"rules": [
                        # usage/config error (exit 2): retrying cannot help
                        {"action": "FailJob", "onExitCodes": {"containerName": "trainer", "operator": "In",
                                                              "values": [2]}},
                        # preemption, eviction, node drain: recreate without counting against backoffLimit
                        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]},
                    "ttlSecondsAfterFinished": int(launch["k8s"]["ttl_seconds_after_finished"]),
                    "template": pod.template(pod_labels, pod.pod_spec(launch, [c], vols, "Never", subdomain=name))}}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": meta(name, namespace, COMPONENT),
               "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,
                        "selector": selector(name, COMPONENT),
                        "ports": [{"name": "rdzv", "port": port, "targetPort": port, "protocol": "TCP"}]}}
    return [service, job]


def pytorch_job(name: str, namespace: str, launch: dict, overrides: list[str], config_map: str) -> list[dict]:
    nodes = int(launch["nodes"])
    procs = int(launch["procs_per_node"])
    command = ["python", "-m", "torch.distributed.run", "--nproc-per-node", str(procs),
               "-m", "ldisc.train.cli", *pod_overrides(name, launch, overrides)]
    vols, mounts = pod.volumes(launch, config_map)
    c = _container(name, launch, command, mounts, "pytorch")       # the operator's container name
    worker = {"replicas": nodes, "restartPolicy": "OnFailure",
              "template": pod.template(labels(name, COMPONENT), pod.pod_spec(launch, [c], vols, "OnFailure"))}
    return [{"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": meta(name, namespace, COMPONENT),
             "spec": {"nprocPerNode": str(procs),
                      "elasticPolicy": {"rdzvBackend": "c10d", "rdzvPort": int(launch["rdzv_port"]),
                                        "minReplicas": int(launch["min_nodes"] or nodes),
                                        "maxReplicas": int(launch["max_nodes"] or nodes),
                                        "maxRestarts": int(launch["max_restarts"]), "nProcPerNode": procs},
                      "runPolicy": {"cleanPodPolicy": "None", "backoffLimit": int(launch["max_restarts"]),
                                    "ttlSecondsAfterFinished": int(launch["k8s"]["ttl_seconds_after_finished"])},
                      "pytorchReplicaSpecs": {"Worker": worker}}}]


def cluster_training_runtime(launch: dict) -> dict:
    """The ClusterTrainingRuntime TrainJobs reference: one torch replicated job whose pods carry the
    security defaults and the writable emptyDirs; image, command and resources come from the TrainJob."""
    rt = launch["k8s"]["runtime"]
    vols, mounts = pod.volumes(dict(launch, storage={**launch["storage"], "pvc": None}), None)
    c = pod.container(RUNTIME_JOB, launch, ["python", "-m", "torch.distributed.run", "-m", "ldisc.train.cli"],
                      mounts, ports=metrics_ports(launch))
    c.pop("env")
    spec = pod.pod_spec(launch, [c], vols, "Never")
    for key in ("nodeSelector", "tolerations", "affinity"):
        spec.pop(key, None)                                        # per job, through podSpecOverrides
    pod_labels = labels(rt, COMPONENT)
    job_template = {"metadata": {"labels": dict(pod_labels)},
                    "spec": {"template": pod.template(pod_labels, spec)}}
    return {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "ClusterTrainingRuntime",
            "metadata": meta(rt, None, COMPONENT),
            "spec": {"mlPolicy": {"numNodes": 1, "torch": {"numProcPerNode": "auto"}},
                     "template": {"spec": {"replicatedJobs": [{"name": RUNTIME_JOB, "replicas": 1,
                                                               "template": job_template}]}}}}


def train_job(name: str, namespace: str, launch: dict, overrides: list[str], config_map: str) -> list[dict]:
    vols, mounts = pod.volumes(launch, config_map)
    runtime_vols = {v["name"] for v in pod.volumes(dict(launch, storage={**launch["storage"], "pvc": None}), None)[0]}
    override = {"targetJobs": [{"name": RUNTIME_JOB}],
                "volumes": [v for v in vols if v["name"] not in runtime_vols],
                "containers": [{"name": RUNTIME_JOB,
                                "volumeMounts": [m for m in mounts if m["name"] not in runtime_vols]}]}
    for key, src in (("nodeSelector", "node_selector"), ("tolerations", "tolerations")):
        if launch.get(src):
            override[key] = launch[src]
    res = pod.resources(launch, int(launch["gpus_per_node"]))
    trainer = {"image": launch["image"],
               "command": ["python", "-m", "torch.distributed.run", "-m", "ldisc.train.cli",
                           *pod_overrides(name, launch, overrides)],
               "env": pod.env(launch), "numNodes": int(launch["nodes"]),
               "numProcPerNode": int(launch["procs_per_node"]), "resourcesPerNode": res}
    return [{"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
             "metadata": meta(name, namespace, COMPONENT),
             "spec": {"runtimeRef": {"name": launch["k8s"]["runtime"], "apiGroup": "trainer.kubeflow.org",
                                     "kind": "ClusterTrainingRuntime"},
                      "labels": labels(name, COMPONENT), "trainer": trainer, "podSpecOverrides": [override]}}]


KINDS = {"job": indexed_job, "pytorchjob": pytorch_job, "trainjob": train_job}


def render(name: str, namespace: str, launch: dict, overrides: list[str], config_map: str) -> list[dict]:
    kind = launch["k8s"]["kind"]
    if kind not in KINDS:
        raise ValueError(f"launch.k8s.kind must be one of {', '.join(KINDS)}, got {kind!r}")
    objects = KINDS[kind](name, namespace, launch, overrides, config_map)
    if kind == "trainjob":
        objects.insert(0, cluster_training_runtime(launch))
    if launch["k8s"].get("pod_monitor"):
        pods = ({TRAINJOB_POD_LABEL: name} if kind == "trainjob" else selector(name, COMPONENT))
        objects.append(pod_monitor(name, namespace, COMPONENT, pods, [p for p, _ in metrics_ports(launch)]))
    return objects
