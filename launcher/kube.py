"""Submit rendered objects to Kubernetes and follow a launched job, with the official ``kubernetes`` client.

One job = every object labelled ``app.kubernetes.io/instance=<name>`` (the renderer puts the label on every
object and pod). Core kinds go through ``CoreV1Api``, every other group through ``CustomObjectsApi``
(its generic ``/apis/{group}/{version}/...`` paths serve built-in groups such as ``batch`` too), so one
table, :data:`KINDS`, dispatches on ``kind``.

Credentials: ``kubeconfig`` argument, else ``$KUBECONFIG``, else the pod's service account (in-cluster),
else ``~/.kube/config``. Errors become :class:`KubeError` with a one-line message.

The newest checkpoint step comes from the ``ldisc_train_checkpoint_step`` gauge that every training rank
exports: ``job_status`` reads ``/metrics`` of each running pod's ``metrics`` container port through the API
server's pod proxy (RBAC ``pods/proxy`` get; without it the step is reported as unknown with the reason).
"""
from __future__ import annotations

import copy
import os
import queue
import re
import threading
from dataclasses import dataclass
from typing import Iterator

from launcher.jobstatus import JobStatus, overall_phase, pod_info, workload_status
from launcher.k8s.common import INSTANCE_LABEL, TRAINJOB_POD_LABEL


@dataclass(frozen=True)
class Kind:
    kind: str
    api_version: str
    plural: str
    namespaced: bool = True
    workload: bool = False      # a job-like object whose conditions make the job's phase

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.rpartition("/")[2]


KINDS = {k.kind: k for k in (
    Kind("Namespace", "v1", "namespaces", namespaced=False),
    Kind("ServiceAccount", "v1", "serviceaccounts"),
    Kind("ConfigMap", "v1", "configmaps"),
    Kind("Secret", "v1", "secrets"),
    Kind("Service", "v1", "services"),
    Kind("PersistentVolumeClaim", "v1", "persistentvolumeclaims"),
    Kind("Pod", "v1", "pods"),
    Kind("Role", "rbac.authorization.k8s.io/v1", "roles"),
    Kind("RoleBinding", "rbac.authorization.k8s.io/v1", "rolebindings"),
    Kind("ClusterRole", "rbac.authorization.k8s.io/v1", "clusterroles", namespaced=False),
    Kind("ClusterRoleBinding", "rbac.authorization.k8s.io/v1", "clusterrolebindings", namespaced=False),
    Kind("NetworkPolicy", "networking.k8s.io/v1", "networkpolicies"),
    Kind("Job", "batch/v1", "jobs", workload=True),
    Kind("CronJob", "batch/v1", "cronjobs", workload=True),
    Kind("PyTorchJob", "kubeflow.org/v1", "pytorchjobs", workload=True),
    Kind("TrainJob", "trainer.kubeflow.org/v1alpha1", "trainjobs", workload=True),
    Kind("ClusterTrainingRuntime", "trainer.kubeflow.org/v1alpha1", "clustertrainingruntimes", namespaced=False),
    Kind("RayJob", "ray.io/v1", "rayjobs", workload=True),
    Kind("RayCluster", "ray.io/v1", "rayclusters"),
    Kind("ServiceMonitor", "monitoring.coreos.com/v1", "servicemonitors"),
    Kind("PodMonitor", "monitoring.coreos.com/v1", "podmonitors"),
    Kind("PrometheusRule", "monitoring.coreos.com/v1", "prometheusrules"),
)}
# What `delete NAME` removes: the kinds a launch renders (launcher.k8s). RBAC, Namespace and the shared
# ClusterTrainingRuntime are platform objects; pods go with their owner (garbage collector).
OWNED_KINDS = [k for k in KINDS.values() if k.workload or k.kind in ("ConfigMap", "Service", "PodMonitor")]


class KubeError(Exception):
    """A one-line, user-facing failure talking to the Kubernetes API; ``status`` is the HTTP code if any."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


# -- connection ------------------------------------------------------------------------------------

def api_client(kubeconfig: str | None = None):
    """An ``ApiClient`` for ``kubeconfig``, else ``$KUBECONFIG``, else in-cluster, else ``~/.kube/config``."""
    from kubernetes import client, config
    path = kubeconfig or os.environ.get("KUBECONFIG")
    cfg = client.Configuration()
    cfg.retries = 1
    try:
        if path:
            config.load_kube_config(config_file=path, client_configuration=cfg, persist_config=False)
        elif os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=cfg)
        elif os.path.exists(os.path.expanduser("~/.kube/config")):
            config.load_kube_config(client_configuration=cfg, persist_config=False)
        else:
            raise KubeError("no Kubernetes credentials: pass --kubeconfig, set KUBECONFIG, or run in a pod")
    except (config.ConfigException, OSError) as e:
        raise KubeError(f"cannot load Kubernetes config {path or '(in-cluster)'}: {_first_line(e)}") from None
    return client.ApiClient(cfg)


class _Api:
    """Create/list/delete of any kind in :data:`KINDS`, mapping client failures to :class:`KubeError`."""

    def __init__(self, kubeconfig: str | None):
        from kubernetes import client
        self.client = api_client(kubeconfig)
        self.core = client.CoreV1Api(self.client)
        self.custom = client.CustomObjectsApi(self.client)
        self.host = self.client.configuration.host

    def call(self, what: str, fn, *args, **kwargs):
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError
        try:
            return fn(*args, **kwargs)
        except ApiException as e:
            raise KubeError(f"{what}: {e.status} {_reason(e)}", e.status) from None
        except HTTPError as e:
            cause = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(e))
            raise KubeError(f"cannot reach the Kubernetes API at {self.host} ({what}): "
                            f"{cause.group(1) if cause else _first_line(e)}") from None

    def _core(self, verb: str, kind: Kind) -> str:
        snake = re.sub(r"(?<!^)(?=[A-Z])", "_", kind.kind).lower()
        return f"{verb}_namespaced_{snake}" if kind.namespaced else f"{verb}_{snake}"

    def create(self, kind: Kind, body: dict, namespace: str) -> None:
        if not kind.group:
            args = (namespace, body) if kind.namespaced else (body,)
            return getattr(self.core, self._core("create", kind))(*args)
        if kind.namespaced:
            return self.custom.create_namespaced_custom_object(kind.group, kind.version, namespace, kind.plural, body)
        return self.custom.create_cluster_custom_object(kind.group, kind.version, kind.plural, body)

    def list(self, kind: Kind, namespace: str, selector: str) -> list[dict]:
        """Objects of ``kind`` matching ``selector``, as dicts; [] where the kind is not installed."""
        from kubernetes.client.exceptions import ApiException
        try:
            if not kind.group:
                out = getattr(self.core, self._core("list", kind))(namespace, label_selector=selector)
                return [self.client.sanitize_for_serialization(o) for o in out.items]
            out = self.custom.list_namespaced_custom_object(kind.group, kind.version, namespace, kind.plural,
                                                            label_selector=selector)
            return out.get("items", [])
        except ApiException as e:
            if e.status == 404:     # the CRD (or the namespace) is not there
                return []
            raise

    def delete(self, kind: Kind, name: str, namespace: str) -> None:
        if not kind.group:
            return getattr(self.core, self._core("delete", kind))(name, namespace, propagation_policy="Background")
        return self.custom.delete_namespaced_custom_object(kind.group, kind.version, namespace, kind.plural, name,
                                                           propagation_policy="Background")


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:300]


def _reason(e) -> str:
    """The API server's message from an ``ApiException`` (a ``Status`` body), on one line."""
    import json
    try:
        body = json.loads(e.body or "{}")
        msg = body.get("message") or body.get("reason") or e.reason
    except (ValueError, AttributeError):
        msg = e.reason
    return " ".join(str(msg).split())[:500]


def _kind_of(obj: dict) -> Kind:
    kind = KINDS.get(obj.get("kind", ""))
    if kind is None or kind.api_version != obj.get("apiVersion"):
        raise KubeError(f"unsupported object {obj.get('apiVersion')}/{obj.get('kind')}; "
                        f"known: {', '.join(f'{k.api_version}/{k.kind}' for k in KINDS.values())}")
    return kind


# -- apply / delete --------------------------------------------------------------------------------

def apply_objects(objects: list[dict], namespace: str, kubeconfig: str | None = None) -> list[str]:
    """Create each object in order (namespaced ones in ``namespace``). An object that already exists
    (409) is left as it is, so re-applying the same stream is idempotent. → one line per object."""
    api = _Api(kubeconfig)
    lines = []
    for obj in objects:
        kind = _kind_of(obj)
        body = copy.deepcopy(obj)
        if kind.namespaced:
            body.setdefault("metadata", {})["namespace"] = namespace
        ref = f"{kind.kind}/{body.get('metadata', {}).get('name')}"
        try:
            api.call(f"create {ref}", api.create, kind, body, namespace)
            lines.append(f"{ref} created")
        except KubeError as e:
            if e.status != 409:
                raise
            lines.append(f"{ref} exists (left unchanged)")
    return lines


def _owned(api: _Api, name: str, namespace: str, kinds, label: str = INSTANCE_LABEL) -> list[tuple[Kind, dict]]:
    selector = f"{label}={name}"
    return [(k, o) for k in kinds for o in api.call(f"list {k.plural}", api.list, k, namespace, selector)]


def _pods(api: _Api, name: str, namespace: str) -> list[dict]:
    """The launch's pods by name: labelled with its instance (Job, PyTorchJob, RayJob), or made by the
    JobSet of a TrainJob of that name (the trainer does not copy the TrainJob's labels onto pods)."""
    found = {}
    for label in (INSTANCE_LABEL, TRAINJOB_POD_LABEL):
        for _, pod in _owned(api, name, namespace, [KINDS["Pod"]], label):
            found[pod["metadata"]["name"]] = pod
    return [found[k] for k in sorted(found)]


def delete_job(name: str, namespace: str, kubeconfig: str | None = None) -> list[str]:
    """Delete every namespaced object labelled ``app.kubernetes.io/instance=name`` (Background propagation:
    the garbage collector removes pods after their owner). → one line per object; KubeError if none."""
    api = _Api(kubeconfig)
    found = _owned(api, name, namespace, OWNED_KINDS)
    if not found:
        raise KubeError(f"no objects labelled {INSTANCE_LABEL}={name} in namespace {namespace}")
    lines = []
    for kind, obj in found:
        ref = f"{kind.kind}/{obj['metadata']['name']}"
        api.call(f"delete {ref}", api.delete, kind, obj["metadata"]["name"], namespace)
        lines.append(f"{ref} deleted")
    return lines


# -- status ----------------------------------------------------------------------------------------

_STEP_RE = re.compile(r"^ldisc_train_checkpoint_step(?:\{[^}]*\})?\s+([0-9.eE+-]+)\s*$", re.M)


def _checkpoint_step(api: _Api, pods: list[dict], namespace: str) -> tuple[int | None, str]:
    """Max ``ldisc_train_checkpoint_step`` over the running pods' first ``metrics*`` port (pod proxy)."""
    best, source, why = None, "", "no running pod exports metrics"
    for pod in pods:
        if (pod.get("status") or {}).get("phase") != "Running":
            continue
        ports = [p["containerPort"] for c in pod["spec"].get("containers", []) for p in c.get("ports") or []
                 if str(p.get("name", "")).startswith("metrics")]
        if not ports:
            continue
        ref = f"{pod['metadata']['name']}:{ports[0]}"
        try:
            resp = api.call(f"metrics of pod {ref}", api.core.connect_get_namespaced_pod_proxy_with_path,
                            ref, namespace, "metrics", _preload_content=False)   # (the client str()s bytes)
            text = resp.data.decode(errors="replace")
        except KubeError as e:
            why = str(e)
            continue
        values = [float(v) for v in _STEP_RE.findall(text)]
        if values and (best is None or max(values) > best):
            best, source = int(max(values)), f"ldisc_train_checkpoint_step of pod {ref}"
        elif not values:
            why = f"pod {ref} has no checkpoint yet"
    return best, source if best is not None else why


def job_status(name: str, namespace: str, kubeconfig: str | None = None) -> JobStatus:
    """Conditions of the job's workload objects, its pods' phases and restarts, the newest checkpoint."""
    api = _Api(kubeconfig)
    found = _owned(api, name, namespace, [k for k in KINDS.values() if k.workload])
    pod_dicts = _pods(api, name, namespace)
    if not found and not pod_dicts:
        raise KubeError(f"no job labelled {INSTANCE_LABEL}={name} in namespace {namespace}")
    workloads = [workload_status(k.kind, o) for k, o in found]
    infos = [pod_info(p) for p in pod_dicts]
    step, source = _checkpoint_step(api, pod_dicts, namespace)
    return JobStatus(name, namespace, overall_phase(workloads, infos), workloads, infos, step, source)


# -- logs ------------------------------------------------------------------------------------------

def _pod_log_lines(api: _Api, pod: dict, namespace: str, tail_lines: int | None, follow: bool) -> Iterator[str]:
    containers = [c["name"] for c in pod["spec"].get("containers", [])]
    pname = pod["metadata"]["name"]
    for container in containers:
        prefix = f"[{pname}]" if len(containers) == 1 else f"[{pname}/{container}]"
        kwargs = {"container": container, "follow": follow, "_preload_content": False}
        if tail_lines is not None:
            kwargs["tail_lines"] = tail_lines
        resp = api.call(f"logs of pod {pname}", api.core.read_namespaced_pod_log, pname, namespace, **kwargs)
        pending = b""
        try:
            for chunk in resp.stream(4096):
                pending += chunk
                *done, pending = pending.split(b"\n")
                for line in done:
                    yield f"{prefix} {line.decode(errors='replace').rstrip(chr(13))}"
        finally:
            resp.release_conn()
        if pending:
            yield f"{prefix} {pending.decode(errors='replace')}"


def job_logs(name: str, namespace: str, kubeconfig: str | None = None, tail_lines: int | None = None,
             follow: bool = False) -> Iterator[str]:
    """Log lines of every pod of the job, each prefixed ``[pod]`` (``[pod/container]`` for several
    containers). Without ``follow`` pod after pod; with ``follow`` interleaved as they arrive."""
    api = _Api(kubeconfig)
    pods = _pods(api, name, namespace)
    if not pods:
        raise KubeError(f"no pods labelled {INSTANCE_LABEL}={name} or {TRAINJOB_POD_LABEL}={name} in {namespace}")
    if not follow:
        for pod in pods:
            yield from _pod_log_lines(api, pod, namespace, tail_lines, False)
        return
    lines: queue.Queue = queue.Queue()
    done = object()

    def pump(pod):
        try:
            for line in _pod_log_lines(api, pod, namespace, tail_lines, True):
                lines.put(line)
        except KubeError as e:
            lines.put(f"[{pod['metadata']['name']}] error: {e}")
        finally:
            lines.put(done)

    for pod in pods:
        threading.Thread(target=pump, args=(pod,), daemon=True).start()
    left = len(pods)
    while left:
        item = lines.get()
        if item is done:
            left -= 1
        else:
            yield item
