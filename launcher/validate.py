"""Strict validation of rendered Kubernetes objects, offline.

- core kinds (Job, CronJob, Service, ConfigMap, ServiceAccount, Role, ...) against the Kubernetes
  OpenAPI schemas bundled by ``kubernetes-validate`` in strict mode (unknown fields are errors, and a
  kind without a schema is an error, never a pass);
- operator kinds (PyTorchJob, TrainJob, ClusterTrainingRuntime, RayJob, RayCluster, PodMonitor,
  ServiceMonitor, PrometheusRule) with ``jsonschema`` against the ``openAPIV3Schema`` of their CRDs in
  ``crd_dir()``, read the way the API server reads them: ``x-kubernetes-int-or-string`` is integer or
  string, ``nullable`` admits null, and fields a schema does not declare are errors (what
  ``kubectl apply --validate=strict`` reports) unless it says ``x-kubernetes-preserve-unknown-fields``;
- ``semantic_problems``: what no schema can say (headless Service selects the job's pods, rendezvous on
  pod 0's DNS name, quantities as strings, pod security, no secret value in the rendered bytes).
"""
from __future__ import annotations

import functools
import os
import re
from pathlib import Path

import yaml

CRD_KINDS = ("PyTorchJob", "TrainJob", "ClusterTrainingRuntime", "RayJob", "RayCluster",
             "PodMonitor", "ServiceMonitor", "PrometheusRule")
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def crd_dir() -> Path:
    """``$LDISC_CRD_DIR`` if set, else ``../shared/crds`` beside the repository root (or beside the
    folder holding a git worktree of it)."""
    env = os.environ.get("LDISC_CRD_DIR")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    candidates = [here.parents[2] / "shared" / "crds", here.parents[3] / "shared" / "crds"]
    return next((c for c in candidates if c.is_dir()), candidates[0])


@functools.lru_cache(maxsize=None)
def _crd_schema(directory: str, api_version: str, kind: str) -> dict | None:
    """The JSON schema of ``kind`` at ``api_version`` from the CRD in ``directory`` that defines it (only
    that file is parsed: the operator CRDs are megabytes of YAML)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    for path in sorted(Path(directory).glob("*.yaml")):
        text = path.read_text()
        if not re.search(rf"^\s+kind: {re.escape(kind)}\s*$", text, re.M):
            continue
        for doc in yaml.load_all(text, Loader=loader):
            if not doc or doc.get("kind") != "CustomResourceDefinition" or doc["spec"]["names"]["kind"] != kind:
                continue
            for version in doc["spec"]["versions"]:
                schema = version.get("schema", {}).get("openAPIV3Schema")
                if schema and f"{doc['spec']['group']}/{version['name']}" == api_version:
                    return _as_json_schema(schema)
    return None


def _as_json_schema(node):
    """OpenAPI v3 structural schema -> JSON schema with the API server's reading of its extensions."""
    if isinstance(node, list):
        return [_as_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _as_json_schema(v) for k, v in node.items()}
    if out.pop("x-kubernetes-int-or-string", False):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if out.pop("nullable", False) and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if "properties" in out and "additionalProperties" not in out \
            and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def _metadata_errors(obj: dict) -> list[str]:
    meta = obj.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
        return ["metadata.name missing"]
    errors = []
    if not DNS1123_SUBDOMAIN.match(meta["name"]) or len(meta["name"]) > 253:
        errors.append(f"metadata.name {meta['name']!r} is not a DNS-1123 subdomain")
    for field in ("labels", "annotations"):
        for key, value in (meta.get(field) or {}).items():
            if not isinstance(value, str):
                errors.append(f"metadata.{field}.{key} must be a string, got {value!r}")
    for key, value in (meta.get("labels") or {}).items():
        if len(value) > 63:
            errors.append(f"metadata.labels.{key} longer than 63 characters")
    return errors


def _crd_errors(obj: dict, directory: Path) -> list[str]:
    import jsonschema

    if not directory.is_dir():
        return [f"CRD schema folder {directory} is absent (set LDISC_CRD_DIR)"]
    schema = _crd_schema(str(directory), str(obj.get("apiVersion")), str(obj.get("kind")))
    if schema is None:
        return [f"no CRD schema for {obj.get('kind')} {obj.get('apiVersion')} in {directory}"]
    validator = jsonschema.Draft202012Validator(schema)
    errors = [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
              for e in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))]
    return errors + _metadata_errors(obj)


@functools.lru_cache(maxsize=None)
def _core_validator(kind: str, api_version: str, k8s_version: str):
    """A strict jsonschema validator for one core kind, built once (kubernetes-validate's schema files,
    the same lookup as ``kubernetes_validate.validate(strict=True)``, with the definitions loaded once)."""
    import jsonschema
    import kubernetes_validate as kv
    from kubernetes_validate import utils
    from referencing import Registry, Resource

    desired = k8s_version[1:] if k8s_version.startswith("v") else k8s_version
    if utils.major_minor(desired) > utils.latest_version():
        raise kv.utils.VersionNotSupportedError(utils.major_minor(desired))
    version = [v for v in utils.all_versions() if utils.major_minor(v) <= utils.major_minor(desired)][-1]
    group = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    folder = f"kubernetes-json-schema/v{version}-local-strict"
    try:
        schema = utils.schema_contents(f"{folder}/{kind.lower()}-{group}.json", desired)
    except FileNotFoundError:
        raise kv.SchemaNotFoundError(version=utils.major_minor(desired), kind=kind, api_version=api_version) from None
    registry = Resource.from_contents(utils.schema_contents(f"{folder}/_definitions.json", desired)) @ (
        Resource.from_contents(schema) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry), utils.major_minor(version)


def _core_errors(obj: dict, k8s_version: str) -> list[str]:
    import kubernetes_validate as kv

    try:
        validator, version = _core_validator(obj["kind"], obj["apiVersion"], k8s_version)
    except (kv.SchemaNotFoundError, kv.utils.VersionNotSupportedError) as e:
        return [e.message]
    errors = [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message} (k8s {version})"
              for e in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))]
    return errors + _metadata_errors(obj)


def validate_object(obj: dict, k8s_version: str = "1.29") -> list[str]:
    """Errors of one object (empty = valid), each prefixed with ``Kind/name``."""
    if not isinstance(obj, dict) or "kind" not in obj or "apiVersion" not in obj:
        return ["not a Kubernetes object (apiVersion and kind required)"]
    name = f"{obj['kind']}/{(obj.get('metadata') or {}).get('name', '?')}"
    errors = _crd_errors(obj, crd_dir()) if obj["kind"] in CRD_KINDS else _core_errors(obj, k8s_version)
    return [f"{name}: {e}" for e in errors]


def newest_k8s_version() -> str:
    from kubernetes_validate.utils import latest_version

    return latest_version()


# ---------------------------------------------------------------------------------------------------
# semantic checks

def pod_specs(node, where: str = ""):
    """Every pod spec inside an object (anything with a ``containers`` list), with its path. A
    TrainJob's ``podSpecOverrides`` are partial (merged into its runtime's pod spec) and skipped."""
    if isinstance(node, dict):
        if isinstance(node.get("containers"), list):
            yield where, node
        for key, value in node.items():
            if key != "podSpecOverrides":
                yield from pod_specs(value, f"{where}.{key}" if where else key)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from pod_specs(value, f"{where}[{i}]")


def _pod_templates(obj: dict):
    """(labels, pod spec) of the pod templates of a Job-like object."""
    def walk(node):
        if isinstance(node, dict):
            spec = node.get("spec")
            if isinstance(spec, dict) and isinstance(spec.get("containers"), list):
                yield (node.get("metadata") or {}).get("labels") or {}, spec
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, list):
            for value in node:
                yield from walk(value)
    yield from walk(obj.get("spec"))


_SECRETISH = re.compile(r"(SECRET|PASSWORD|TOKEN|ACCESS_KEY|PRIVATE|CREDENTIAL)", re.I)


def _security_problems(where: str, pod: dict) -> list[str]:
    problems = []
    psc = pod.get("securityContext") or {}
    if psc.get("runAsNonRoot") is not True:
        problems.append(f"{where}: pod securityContext.runAsNonRoot is not true")
    if not isinstance(psc.get("runAsUser"), int) or psc.get("runAsUser") == 0:
        problems.append(f"{where}: pod securityContext.runAsUser is not a fixed non-root UID")
    for c in list(pod.get("containers") or []) + list(pod.get("initContainers") or []):
        csc = c.get("securityContext") or {}
        tag = f"{where}: container {c.get('name')}"
        seccomp = (csc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp != "RuntimeDefault":
            problems.append(f"{tag}: seccompProfile is not RuntimeDefault")
        if csc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{tag}: allowPrivilegeEscalation is not false")
        if csc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{tag}: readOnlyRootFilesystem is not true")
        if "ALL" not in ((csc.get("capabilities") or {}).get("drop") or []):
            problems.append(f"{tag}: capabilities do not drop ALL")
        if csc.get("runAsNonRoot") is False or csc.get("runAsUser") == 0 or csc.get("privileged"):
            problems.append(f"{tag}: overrides the pod's non-root settings")
        volumes = {v.get("name") for v in pod.get("volumes") or []}
        for m in c.get("volumeMounts") or []:
            if m.get("name") not in volumes:
                problems.append(f"{tag}: volumeMount {m.get('name')!r} has no volume")
        for kind in ("requests", "limits"):
            for res, qty in ((c.get("resources") or {}).get(kind) or {}).items():
                if not isinstance(qty, str):
                    problems.append(f"{tag}: resources.{kind}.{res} = {qty!r} is not a string quantity")
        for env in c.get("env") or []:
            if _SECRETISH.search(env.get("name", "")) and "value" in env:
                problems.append(f"{tag}: env {env['name']} carries a literal value; use secretKeyRef")
    for v in pod.get("volumes") or []:
        size = (v.get("emptyDir") or {}).get("sizeLimit")
        if size is not None and not isinstance(size, str):
            problems.append(f"{where}: volume {v.get('name')} sizeLimit {size!r} is not a string quantity")
    return problems


def _flag(args: list[str], name: str) -> str | None:
    """Value of ``--name V`` or ``--name=V`` in an argv (dashes and underscores alike)."""
    names = {name, name.replace("-", "_")}
    for i, arg in enumerate(args):
        head, _, value = arg.partition("=")
        if head in names:
            return value if value else (args[i + 1] if i + 1 < len(args) else None)
    return None


def _indexed_job_problems(job: dict, services: dict[str, dict], nodes: int | None) -> list[str]:
    name, spec = job["metadata"]["name"], job["spec"]
    ns = job["metadata"].get("namespace", "default")
    problems = []
    tpl = spec["template"]
    pod, labels = tpl["spec"], (tpl.get("metadata") or {}).get("labels") or {}
    if spec.get("completions") != spec.get("parallelism"):
        problems.append(f"Job/{name}: completions {spec.get('completions')} != parallelism {spec.get('parallelism')}")
    if nodes is not None and spec.get("completions") != nodes:
        problems.append(f"Job/{name}: completions {spec.get('completions')} != nodes {nodes}")
    last_host = f"{name}-{max(int(spec.get('completions') or 1) - 1, 0)}"
    if len(last_host) > 63:
        problems.append(f"Job/{name}: pod hostname {last_host!r} longer than 63 characters")
    sub = pod.get("subdomain")
    svc = services.get(sub)
    if svc is None:
        problems.append(f"Job/{name}: no Service named after its pods' subdomain {sub!r}")
    else:
        if svc["spec"].get("clusterIP") != "None":
            problems.append(f"Service/{sub}: not headless (clusterIP: None)")
        selector = svc["spec"].get("selector") or {}
        if not selector or any(labels.get(k) != v for k, v in selector.items()):
            problems.append(f"Service/{sub}: selector {selector} does not match the pod labels {labels}")
    for c in pod["containers"]:
        args = list(c.get("command") or []) + list(c.get("args") or [])
        endpoint = _flag(args, "--rdzv-endpoint")
        if endpoint is None:
            continue
        host = endpoint.rsplit(":", 1)[0]
        want = {f"{name}-0.{sub}.{ns}.svc", f"{name}-0.{sub}.{ns}.svc.cluster.local"}
        if host not in want:
            problems.append(f"Job/{name}: rendezvous host {host!r} is not pod 0's DNS name {sorted(want)[0]!r}")
        nnodes = _flag(args, "--nnodes")
        if nnodes is not None and nnodes.split(":")[-1] != str(spec.get("completions")):
            problems.append(f"Job/{name}: torchrun --nnodes {nnodes} != completions {spec.get('completions')}")
    return problems


def semantic_problems(objects: list[dict], nodes: int | None = None,
                      secret_values: list[str] = ()) -> list[str]:
    """What the schemas cannot check; empty = fine. ``secret_values`` must not appear in any byte of the
    rendered stream; ``nodes`` is the node count the pretraining job was asked for."""
    problems = []
    services = {o["metadata"]["name"]: o for o in objects if o.get("kind") == "Service"}
    for obj in objects:
        kind, name = obj.get("kind"), obj["metadata"]["name"]
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component"):
            if key not in (obj["metadata"].get("labels") or {}):
                problems.append(f"{kind}/{name}: label {key} missing")
        if kind == "Secret":
            problems.append(f"Secret/{name}: rendered Secrets would put credentials in the stream")
        for where, pod in pod_specs(obj.get("spec"), "spec"):
            problems += _security_problems(f"{kind}/{name} {where}", pod)
        for labels, _ in _pod_templates(obj):
            if "app.kubernetes.io/instance" not in labels:
                problems.append(f"{kind}/{name}: pod template lacks label app.kubernetes.io/instance")
        if kind == "Job" and obj["spec"].get("completionMode") == "Indexed" and (obj["spec"].get("completions") or 1) > 1:
            problems += _indexed_job_problems(obj, services, nodes)
        if kind == "PyTorchJob" and nodes is not None:
            workers = obj["spec"]["pytorchReplicaSpecs"].get("Worker", {}).get("replicas")
            master = obj["spec"]["pytorchReplicaSpecs"].get("Master", {}).get("replicas", 0)
            if (workers or 0) + master != nodes:
                problems.append(f"PyTorchJob/{name}: {master} master + {workers} workers != nodes {nodes}")
    text = yaml.safe_dump_all(objects)
    for value in secret_values:
        if value and value in text:
            problems.append("a secret value appears in the rendered stream")
    return problems
