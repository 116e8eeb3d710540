"""Ingestion: a Job (or, with ``launch.schedule``, a CronJob with ``concurrencyPolicy: Forbid``) running
``ldisc-shard ingest`` on a hospital drop folder. Re-ingesting adds nothing (content-hash dedup), and a
running pretraining job picks the new manifest version up at its next epoch boundary."""
from __future__ import annotations

from . import pod
from .common import labels, meta

COMPONENT = "ingest"
INGEST_FLAGS = ("site", "modality", "workers", "stored_side", "shard_samples")


def dataset(launch: dict) -> str:
    storage = launch["storage"]
    return launch["ingest"].get("dataset") or storage.get("s3_url") or f"{storage['mount_path']}/dataset"


def ingest_args(launch: dict, name: str, metrics_file: str | None = None) -> list[str]:
    """argv of ``ldisc-shard`` for ``launch.ingest.*``; a clear error for what is missing."""
    ing = launch["ingest"]
    missing = [k for k in ("source", "site", "modality") if not ing.get(k)]
    if missing:
        raise ValueError(f"ingest needs {', '.join('launch.ingest.' + k for k in missing)}")
    args = ["ingest", str(ing["source"]), "--dataset", dataset(launch)]
    for key in INGEST_FLAGS:
        if ing.get(key) is not None:
            args += [f"--{key.replace('_', '-')}", str(ing[key])]
    metrics_file = ing.get("metrics_file") or metrics_file
    if metrics_file:
        args += ["--metrics-file", str(metrics_file)]
    return [*args, "--no-progress"]


def render(name: str, namespace: str, launch: dict, config_map: str) -> list[dict]:
    vols, mounts = pod.volumes(launch, config_map, shm=False)
    command = ["python", "-m", "sharding.cli",
               *ingest_args(launch, name, f"{pod.RUN_MOUNT}/ingest-metrics.prom")]
    c = pod.container("ingest", launch, command, mounts, patient_key=True)
    pod_labels = labels(name, COMPONENT)
    job_spec = {"backoffLimit": int(launch["max_restarts"]),
                "podFailurePolicy": {"rules": [
                    {"action": "FailJob", "onExitCodes": {"containerName": "ingest", "operator": "In", "values": [2]}},
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]},
                "ttlSecondsAfterFinished": int(launch["k8s"]["ttl_seconds_after_finished"]),
                "template": pod.template(pod_labels, pod.pod_spec(launch, [c], vols, "Never"))}
    if not launch.get("schedule"):
        return [{"apiVersion": "batch/v1", "kind": "Job", "metadata": meta(name, namespace, COMPONENT),
                 "spec": job_spec}]
    return [{"apiVersion": "batch/v1", "kind": "CronJob", "metadata": meta(name, namespace, COMPONENT),
             "spec": {"schedule": str(launch["schedule"]), "concurrencyPolicy": "Forbid",
                      "successfulJobsHistoryLimit": 3, "failedJobsHistoryLimit": 3,
                      "jobTemplate": {"metadata": {"labels": dict(pod_labels)}, "spec": job_spec}}}]
