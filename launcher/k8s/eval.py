"""Evaluation: a KubeRay ``ray.io/v1`` RayJob whose entrypoint is ``ldisc-eval`` with the given overrides
on a cluster sized from ``launch.ray``; the cluster is deleted when the job ends (TTL)."""
from __future__ import annotations

import shlex

from . import pod
from .common import labels, meta

COMPONENT = "eval"


def out_dir(name: str, launch: dict) -> str:
    storage = launch["storage"]
    return f"{storage['mount_path']}/eval/{name}" if storage.get("pvc") else f"{pod.RUN_MOUNT}/{name}"


def eval_overrides(name: str, launch: dict, overrides: list[str], address: str = "auto") -> list[str]:
    """What ``ldisc-eval`` runs with on the cluster: the user's overrides, then the pinned ones."""
    return [*overrides, f"ray.address={address}", f"out_dir={out_dir(name, launch)}", "fleet.progress=false"]


def render(name: str, namespace: str, launch: dict, overrides: list[str], config_map: str) -> list[dict]:
    ray = launch["ray"]
    vols, mounts = pod.volumes(launch, config_map)
    pod_labels = labels(name, COMPONENT)
    head = pod.container("ray-head", launch, None, mounts, cpu=ray["head_cpu"], memory=ray["head_memory"],
                         ports=[("gcs", 6379), ("dashboard", 8265), ("client", 10001)])
    worker = pod.container("ray-worker", launch, None, mounts, gpus=int(ray["worker_gpus"]),
                           cpu=ray["worker_cpu"], memory=ray["worker_memory"])
    submitter = pod.container("ray-job-submitter", launch, None, [m for m in mounts if m["name"] == "tmp"],
                              cpu="500m", memory="1Gi")
    replicas = int(ray["worker_replicas"])
    entrypoint = shlex.join(["python", "-m", "ldisc.eval.cli", *eval_overrides(name, launch, overrides)])
    return [{"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": meta(name, namespace, COMPONENT),
             "spec": {"entrypoint": entrypoint, "shutdownAfterJobFinishes": True,
                      "ttlSecondsAfterFinished": int(ray["ttl_seconds_after_finished"]),
                      "backoffLimit": int(launch["max_restarts"]),
                      "submitterPodTemplate": pod.template(pod_labels, pod.pod_spec(
                          launch, [submitter], [v for v in vols if v["name"] == "tmp"], "Never")),
                      "rayClusterSpec": {
                          "rayVersion": str(ray["version"]),
                          "headGroupSpec": {"rayStartParams": {"dashboard-host": "0.0.0.0"},
                                            "template": pod.template(pod_labels, pod.pod_spec(
                                                launch, [head], vols, "Always"))},
                          "workerGroupSpecs": [{"groupName": "workers", "replicas": replicas,
                                                "minReplicas": replicas, "maxReplicas": replicas,
                                                "rayStartParams": {},
                                                "template": pod.template(pod_labels, pod.pod_spec(
                                                    launch, [worker], vols, "Always"))}]}}}]
