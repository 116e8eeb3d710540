"""A small fake Kubernetes API server on 127.0.0.1 for the submission-path tests (a helper, not a test).

What it serves, enough for the official ``kubernetes`` client and ``kubectl get``:

- discovery: ``/version``, ``/api``, ``/apis``, ``/api/v1``, ``/apis/{group}/{version}`` (legacy, not the
  aggregated v2 form) for every kind in :data:`launcher.kube.KINDS`;
- objects: create (201; 409 AlreadyExists; 422 Invalid with the errors of
  :func:`launcher.validate.validate_object`; 400 on a namespace or kind that does not match the URL), get
  (404 NotFound), list with ``labelSelector`` (``k=v``, ``k!=v``, ``k``), ``?watch=true`` (the current
  objects as ADDED events, then the stream closes) and delete (records ``propagationPolicy``, and removes
  the objects whose ``ownerReferences`` point at the deleted one, as the garbage collector would);
- ``pods/{name}/log`` (``tailLines``; stored text) and ``pods/{name}:{port}/proxy/{path}`` (stored text).

Namespaces are not modelled (every namespace exists); there is no update/patch, no controller (the test
sets status with :meth:`FakeKube.set_status` and creates pods with :meth:`FakeKube.add_pod`).
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from launcher.kube import KINDS, Kind
from launcher.validate import validate_object

BY_PLURAL = {(k.api_version, k.plural): k for k in KINDS.values()}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}


def _matches(labels: dict, selector: str) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key) != value:
                return False
        elif term not in labels:
            return False
    return True


class FakeKube:
    """``with FakeKube() as kube: kube.write_kubeconfig(path)``; objects live in ``kube.objects``."""

    def __init__(self, validate: bool = True):
        self.validate = validate
        self.objects: dict[tuple[str, str, str, str], dict] = {}     # (apiVersion, plural, ns, name) -> obj
        self.logs: dict[tuple[str, str], str] = {}                    # (ns, pod) -> text
        self.proxied: dict[tuple[str, str, int, str], str] = {}       # (ns, pod, port, path) -> text
        self.requests: list[tuple[str, str]] = []                     # (method, path?query)
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> "FakeKube":
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    __enter__ = start

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def write_kubeconfig(self, path: str | Path, namespace: str = "default") -> Path:
        """A kubeconfig (JSON is YAML) with one context pointing at this server, no credentials."""
        cfg = {"apiVersion": "v1", "kind": "Config", "current-context": "fake",
               "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
               "users": [{"name": "fake", "user": {}}],
               "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}]}
        Path(path).write_text(json.dumps(cfg, indent=1))
        return Path(path)

    # -- direct access for tests (what controllers and kubelets would do) -----------------------------
    def get(self, kind: str, name: str, namespace: str = "") -> dict | None:
        k = KINDS[kind]
        return self.objects.get((k.api_version, k.plural, namespace if k.namespaced else "", name))

    def set_status(self, kind: str, name: str, namespace: str, status: dict) -> None:
        with self.lock:
            obj = self.get(kind, name, namespace)
            if obj is None:
                raise KeyError(f"{kind}/{name} not in namespace {namespace}")
            obj["status"] = status
            self._bump(obj)

    def add_pod(self, name: str, namespace: str, labels: dict, phase: str = "Running", restarts: int = 0,
                log: str = "", owner: dict | None = None, metrics_port: int | None = None,
                waiting_reason: str = "") -> dict:
        """A pod as a kubelet would report it: one container ``trainer`` with ``restarts`` restarts."""
        state = {"waiting": {"reason": waiting_reason}} if waiting_reason else {"running": {"startedAt": _now()}}
        container = {"name": "trainer", "image": "ldisc:test"}
        if metrics_port:
            container["ports"] = [{"name": "metrics", "containerPort": metrics_port}]
        meta = {"name": name, "namespace": namespace, "labels": dict(labels)}
        if owner:
            meta["ownerReferences"] = [{"apiVersion": owner["apiVersion"], "kind": owner["kind"],
                                        "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"]}]
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
               "spec": {"containers": [container], "nodeName": "node-a"},
               "status": {"phase": phase, "containerStatuses": [
                   {"name": "trainer", "ready": phase == "Running", "restartCount": restarts, "image": "ldisc:test",
                    "imageID": "", "state": state}]}}
        with self.lock:
            self._store(pod, namespace)
            self.logs[(namespace, name)] = log
        return pod

    def set_proxy(self, namespace: str, pod: str, port: int, path: str, text: str) -> None:
        self.proxied[(namespace, pod, port, path)] = text

    # -- storage -----------------------------------------------------------------------------------
    def _bump(self, obj: dict) -> None:
        meta = obj["metadata"]
        meta["resourceVersion"] = str(int(meta.get("resourceVersion", "0")) + 1)

    def _store(self, obj: dict, namespace: str) -> None:
        kind = KINDS[obj["kind"]]
        meta = obj.setdefault("metadata", {})
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), resourceVersion="1")
        if kind.namespaced:
            meta["namespace"] = namespace
        self.objects[(kind.api_version, kind.plural, namespace if kind.namespaced else "", meta["name"])] = obj

    def create(self, kind: Kind, namespace: str, obj: dict) -> tuple[int, dict]:
        meta = obj.get("metadata") or {}
        if obj.get("kind") != kind.kind or obj.get("apiVersion") != kind.api_version:
            return 400, _status(400, "BadRequest", f"{obj.get('apiVersion')}/{obj.get('kind')} posted to "
                                                  f"{kind.api_version} {kind.plural}")
        if kind.namespaced and meta.get("namespace", namespace) != namespace:
            return 400, _status(400, "BadRequest", "the namespace of the provided object does not match the "
                                                  "namespace sent on the request")
        what = f"{kind.plural}.{kind.group}" if kind.group else kind.plural
        errors = validate_object(obj) if self.validate else []
        if errors:
            return 422, _status(422, "Invalid", f'{kind.kind}.{kind.group or "core"} "{meta.get("name")}" is '
                                                f'invalid: {"; ".join(errors)}')
        key = (kind.api_version, kind.plural, namespace if kind.namespaced else "", meta["name"])
        with self.lock:
            if key in self.objects:
                return 409, _status(409, "AlreadyExists", f'{what} "{meta["name"]}" already exists')
            self._store(obj, namespace)
        return 201, obj

    def listing(self, kind: Kind, namespace: str | None, selector: str) -> list[dict]:
        with self.lock:
            return [o for (av, pl, ns, _), o in sorted(self.objects.items())
                    if (av, pl) == (kind.api_version, kind.plural) and namespace in (None, ns)
                    and _matches(o["metadata"].get("labels") or {}, selector)]

    def delete(self, kind: Kind, namespace: str, name: str) -> tuple[int, dict]:
        key = (kind.api_version, kind.plural, namespace if kind.namespaced else "", name)
        with self.lock:
            obj = self.objects.pop(key, None)
            if obj is None:
                what = f"{kind.plural}.{kind.group}" if kind.group else kind.plural
                return 404, _status(404, "NotFound", f'{what} "{name}" not found')
            uid = obj["metadata"]["uid"]
            for k, o in list(self.objects.items()):      # the garbage collector, at once
                if any(r.get("uid") == uid for r in o["metadata"].get("ownerReferences") or []):
                    del self.objects[k]
        return 200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                     "details": {"name": name, "kind": kind.plural, "uid": uid}}

    # -- discovery ---------------------------------------------------------------------------------
    def resources(self, api_version: str) -> list[dict]:
        out = []
        for k in KINDS.values():
            if k.api_version == api_version:
                out.append({"name": k.plural, "singularName": k.kind.lower(), "namespaced": k.namespaced,
                            "kind": k.kind, "verbs": ["create", "delete", "get", "list", "watch"]})
        if api_version == "v1":
            out += [{"name": f"pods/{sub}", "singularName": "", "namespaced": True, "kind": kind, "verbs": ["get"]}
                    for sub, kind in (("log", "Pod"), ("proxy", "PodProxyOptions"))]
        return out

    def groups(self) -> list[dict]:
        seen = {}
        for k in KINDS.values():
            if k.group:
                gv = {"groupVersion": k.api_version, "version": k.version}
                seen.setdefault(k.group, {"name": k.group, "versions": [gv], "preferredVersion": gv})
        return list(seen.values())


def _handler(kube: FakeKube):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):     # quiet
            pass

        def _send(self, code: int, body, content_type: str = "application/json") -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _route(self):
            """→ (kind, namespace, name, subresource) of an object path, or None."""
            parts = [unquote(p) for p in urlsplit(self.path).path.split("/") if p]
            if parts[:1] == ["api"] and len(parts) >= 2:
                api_version, rest = parts[1], parts[2:]
            elif parts[:1] == ["apis"] and len(parts) >= 3:
                api_version, rest = f"{parts[1]}/{parts[2]}", parts[3:]
            else:
                return None
            namespace = None
            if len(rest) >= 3 and rest[0] == "namespaces":
                namespace, rest = rest[1], rest[2:]
            if not rest:
                return None
            kind = BY_PLURAL.get((api_version, rest[0]))
            if kind is None:
                return None
            return kind, namespace or "", rest[1] if len(rest) > 1 else None, "/".join(rest[2:])

        def do_GET(self):
            kube.requests.append(("GET", self.path))
            url = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            path = url.path.rstrip("/")
            if path == "/version":
                return self._send(200, {"major": "1", "minor": "29", "gitVersion": "v1.29.0-fake", "platform": "linux/amd64"})
            if path == "/api":
                return self._send(200, {"kind": "APIVersions", "versions": ["v1"],
                                        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                                                        "serverAddress": "127.0.0.1"}]})
            if path == "/apis":
                return self._send(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": kube.groups()})
            parts = path.split("/")
            if (parts[1:2] == ["api"] and len(parts) == 3) or (parts[1:2] == ["apis"] and len(parts) == 4):
                gv = "/".join(parts[2:])
                resources = kube.resources(gv)
                if resources:
                    return self._send(200, {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
                                            "resources": resources})
            route = self._route()
            if route is None:
                return self._send(404, _status(404, "NotFound", f"the server could not find {url.path}"))
            kind, namespace, name, sub = route
            if name is None:
                items = kube.listing(kind, namespace if kind.namespaced and namespace else None,
                                     query.get("labelSelector", ""))
                if query.get("watch", "").lower() in ("true", "1"):     # the Python client sends "True"
                    return self._watch(items)
                return self._send(200, {"kind": f"{kind.kind}List", "apiVersion": kind.api_version,
                                        "metadata": {"resourceVersion": "1"}, "items": items})
            if kind.kind == "Pod" and ":" in name and sub.startswith("proxy"):
                pod, port = name.split(":", 1)
                text = kube.proxied.get((namespace, pod, int(port), sub[len("proxy/"):]))
                if text is None:
                    return self._send(503, _status(503, "ServiceUnavailable", f"no endpoint {name}"))
                return self._send(200, text.encode(), "text/plain")
            obj = kube.get(kind.kind, name, namespace)
            if obj is None:
                what = f"{kind.plural}.{kind.group}" if kind.group else kind.plural
                return self._send(404, _status(404, "NotFound", f'{what} "{name}" not found'))
            if kind.kind == "Pod" and sub == "log":
                lines = kube.logs.get((namespace, name), "").splitlines(keepends=True)
                if "tailLines" in query:
                    lines = lines[-int(query["tailLines"]):] if int(query["tailLines"]) else []
                return self._send(200, "".join(lines).encode(), "text/plain")
            if sub:
                return self._send(404, _status(404, "NotFound", f"no subresource {sub}"))
            return self._send(200, obj)

        def _watch(self, items: list[dict]) -> None:
            data = b"".join(json.dumps({"type": "ADDED", "object": o}).encode() + b"\n" for o in items)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            kube.requests.append(("POST", self.path))
            route = self._route()
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if route is None or route[2] is not None:
                return self._send(404, _status(404, "NotFound", f"the server could not find {self.path}"))
            try:
                obj = json.loads(body)
            except ValueError as e:
                return self._send(400, _status(400, "BadRequest", f"invalid JSON: {e}"))
            kind, namespace, _, _ = route
            code, answer = kube.create(kind, namespace, obj)
            self._send(code, answer)

        def do_DELETE(self):
            kube.requests.append(("DELETE", self.path))
            if int(self.headers.get("Content-Length", 0) or 0):
                self.rfile.read(int(self.headers["Content-Length"]))
            route = self._route()
            if route is None or route[2] is None:
                return self._send(404, _status(404, "NotFound", f"the server could not find {self.path}"))
            kind, namespace, name, _ = route
            self._send(*kube.delete(kind, namespace, name))

    return Handler
