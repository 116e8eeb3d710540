"""Names, labels and the objects every launch shares: resolved-config ConfigMap, PodMonitor, RBAC."""
from __future__ import annotations

import re
import time

import yaml

APP = "ldisc"
# Indexed Job pods are named <job>-<index>-<suffix> with hostname <job>-<index>; 40 characters leave room
# for the index and the Job controller's suffixes inside the 63-character label/hostname limit.
MAX_NAME = 40
CONFIG_MOUNT = "/etc/ldisc"
INSTANCE_LABEL = "app.kubernetes.io/instance"
# A TrainJob's pods are made by the trainer's JobSet, named after the TrainJob, from the runtime's template:
# they carry the JobSet's label, not the TrainJob's (spec.labels reach the JobSet and Jobs only).
TRAINJOB_POD_LABEL = "jobset.sigs.k8s.io/jobset-name"


def job_name(entry: str, name: str | None = None, now: float | None = None) -> str:
    """A DNS-1123 label of at most ``MAX_NAME`` characters: ``name`` cleaned, or ``ldisc-<entry>-<UTC time>``."""
    raw = name or f"{APP}-{entry}-{time.strftime('%m%d-%H%M%S', time.gmtime(now))}"
    clean = re.sub(r"[^a-z0-9-]+", "-", str(raw).lower()).strip("-")[:MAX_NAME].rstrip("-")
    if not clean or not clean[0].isalpha():
        raise ValueError(f"job name {raw!r} does not start with a letter (DNS-1123, at most {MAX_NAME} characters)")
    return clean


def labels(name: str, component: str) -> dict[str, str]:
    """The ``app.kubernetes.io/*`` labels of every object and pod of a launch (``instance`` = job name)."""
    return {"app.kubernetes.io/name": APP, INSTANCE_LABEL: name,
            "app.kubernetes.io/component": component, "app.kubernetes.io/part-of": APP,
            "app.kubernetes.io/managed-by": "ldisc-launch"}


def selector(name: str, component: str) -> dict[str, str]:
    """The labels that pick exactly this launch's pods."""
    return {INSTANCE_LABEL: name, "app.kubernetes.io/component": component}


def meta(name: str, namespace: str | None, component: str, instance: str | None = None) -> dict:
    """metadata of an object named ``name`` belonging to launch ``instance`` (default: ``name``)."""
    m = {"name": name, "labels": labels(instance or name, component)}
    if namespace:
        m["namespace"] = namespace
    return m


def config_map(name: str, namespace: str, component: str, files: dict[str, dict]) -> dict:
    """The resolved configs (``file name -> config``), mounted read-only at ``CONFIG_MOUNT``."""
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(f"{name}-config", namespace, component, name),
            "data": {fname: yaml.safe_dump(cfg, sort_keys=False) for fname, cfg in files.items()}}


def pod_monitor(name: str, namespace: str, component: str, pod_labels: dict, ports: list[str]) -> dict:
    """A prometheus-operator PodMonitor scraping ``ports`` (named container ports) of the launch's pods."""
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor",
            "metadata": meta(name, namespace, component),
            "spec": {"selector": {"matchLabels": pod_labels},
                     "podMetricsEndpoints": [{"port": p, "path": "/metrics", "interval": "30s"} for p in ports]}}


def rbac_objects(namespace: str, account: str = APP) -> list[dict]:
    """The Namespace, one ServiceAccount, and the least Role that ``ldisc-launch status|logs|delete``
    (and apply) need in that namespace."""
    crd_rules = [
        {"apiGroups": ["kubeflow.org"], "resources": ["pytorchjobs"]},
        {"apiGroups": ["trainer.kubeflow.org"], "resources": ["trainjobs"]},
        {"apiGroups": ["ray.io"], "resources": ["rayjobs"]},
        {"apiGroups": ["monitoring.coreos.com"], "resources": ["podmonitors"]},
        {"apiGroups": ["batch"], "resources": ["jobs", "cronjobs"]},
        {"apiGroups": [""], "resources": ["services", "configmaps"]},
    ]
    rules = [{"apiGroups": [""], "resources": ["pods", "pods/log", "events"], "verbs": ["get", "list", "watch"]},
             # status reads the newest checkpoint step from each pod's metrics port through the API server
             {"apiGroups": [""], "resources": ["pods/proxy"], "verbs": ["get"]}]
    rules += [dict(r, verbs=["get", "list", "watch", "create", "delete"]) for r in crd_rules]
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": meta(namespace, None, "platform", "platform")},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(account, namespace, "platform", "platform"),
         "automountServiceAccountToken": False},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": meta(f"{account}-launcher", namespace, "platform", "platform"), "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": meta(f"{account}-launcher", namespace, "platform", "platform"),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": f"{account}-launcher"},
         "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}]},
    ]


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the ConfigMap's files) as literal blocks, readable in a dry run."""


_Dumper.add_representer(str, lambda d, s: d.represent_scalar(
    "tag:yaml.org,2002:str", s, style="|" if "\n" in s and not any(l != l.rstrip() for l in s.splitlines()) else None))


def yaml_stream(objects: list[dict]) -> str:
    """One YAML stream, documents in order, keys in the order they were built."""
    return yaml.dump_all(objects, Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def file_name(obj: dict) -> str:
    return f"{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"
