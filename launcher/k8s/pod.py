"""Containers and pod specs with ldisc's defaults: non-root fixed UID, read-only root filesystem with
writable emptyDirs (/tmp, the run dir, memory-backed /dev/shm), all capabilities dropped, seccomp
RuntimeDefault, resources as string quantities, credentials only through ``secretKeyRef``."""
from __future__ import annotations

from ldisc.malloc import GLIBC_KEEP_ENV

from .common import CONFIG_MOUNT

RUN_MOUNT = "/run/ldisc"        # writable run dir when no PVC holds it


def container_security(uid: int) -> dict:
    return {"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": uid, "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"}}


def pod_security(uid: int) -> dict:
    return {"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": uid, "fsGroup": uid,
            "seccompProfile": {"type": "RuntimeDefault"}}


def resources(launch: dict, gpus: int, cpu: str | None = None, memory: str | None = None) -> dict:
    """Requests/limits as Kubernetes string quantities; GPUs under ``launch.gpu_resource``."""
    cpu, memory = str(cpu or launch["cpu"]), str(memory or launch["memory"])
    res = {"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": memory}}
    if gpus:
        res["requests"][launch["gpu_resource"]] = str(gpus)
        res["limits"][launch["gpu_resource"]] = str(gpus)
    return res


def _secret_env(name: str, secret: str, key: str) -> dict:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def env(launch: dict, patient_key: bool = False) -> list[dict]:
    """Process environment: writable HOME/caches under /tmp, glibc told to keep freed blocks (the
    image-independent allocator setting of :func:`ldisc.malloc.cpu_malloc_env`), S3 endpoint, and
    secrets by reference only."""
    out = [{"name": "HOME", "value": "/tmp"}, {"name": "XDG_CACHE_HOME", "value": "/tmp/.cache"},
           {"name": "MPLCONFIGDIR", "value": "/tmp/.matplotlib"}, {"name": "PYTHONUNBUFFERED", "value": "1"}]
    out += [{"name": k, "value": v} for k, v in GLIBC_KEEP_ENV.items()]
    storage = launch["storage"]
    if storage.get("s3_endpoint"):
        out.append({"name": "AWS_ENDPOINT_URL", "value": str(storage["s3_endpoint"])})
    if storage.get("secret"):
        out += [_secret_env(k, storage["secret"], k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")]
    if patient_key and storage.get("patient_key_secret"):
        out.append(_secret_env("LDISC_PATIENT_KEY_SECRET", storage["patient_key_secret"], "LDISC_PATIENT_KEY_SECRET"))
    return out


def volumes(launch: dict, config_map: str | None, shm: bool = True) -> tuple[list[dict], list[dict]]:
    """(volumes, volumeMounts): /tmp, run dir, /dev/shm, the resolved config, the data PVC."""
    vols = [{"name": "tmp", "emptyDir": {"sizeLimit": str(launch["tmp_size"])}},
            {"name": "run", "emptyDir": {}}]
    mounts = [{"name": "tmp", "mountPath": "/tmp"}, {"name": "run", "mountPath": RUN_MOUNT}]
    if shm:
        vols.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": str(launch["shm_size"])}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    if config_map:
        vols.append({"name": "config", "configMap": {"name": config_map}})
        mounts.append({"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True})
    if launch["storage"].get("pvc"):
        vols.append({"name": "data", "persistentVolumeClaim": {"claimName": launch["storage"]["pvc"]}})
        mounts.append({"name": "data", "mountPath": launch["storage"]["mount_path"]})
    return vols, mounts


def container(name: str, launch: dict, command: list[str] | None, mounts: list[dict], gpus: int = 0,
              ports: list[tuple[str, int]] = (), patient_key: bool = False,
              cpu: str | None = None, memory: str | None = None) -> dict:
    c = {"name": name, "image": launch["image"], "imagePullPolicy": launch["image_pull_policy"],
         "env": env(launch, patient_key), "resources": resources(launch, gpus, cpu, memory),
         "volumeMounts": mounts, "securityContext": container_security(int(launch["uid"]))}
    if command is not None:                 # None: the operator supplies it (KubeRay's ray start)
        c["command"] = [str(a) for a in command]
    if ports:
        c["ports"] = [{"name": pname, "containerPort": int(port), "protocol": "TCP"} for pname, port in ports]
    return c


def pod_spec(launch: dict, containers: list[dict], vols: list[dict], restart_policy: str, **extra) -> dict:
    """A pod spec for ``containers`` with scheduling from config (nodeSelector, tolerations, affinity)."""
    spec = {"restartPolicy": restart_policy, "serviceAccountName": launch["service_account"],
            "automountServiceAccountToken": False, "securityContext": pod_security(int(launch["uid"])),
            "containers": containers, "volumes": vols, **extra}
    for key, src in (("nodeSelector", "node_selector"), ("tolerations", "tolerations"), ("affinity", "affinity")):
        if launch.get(src):
            spec[key] = launch[src]
    return spec


def template(pod_labels: dict, spec: dict) -> dict:
    return {"metadata": {"labels": dict(pod_labels)}, "spec": spec}
