"""Compose ``launch`` + the entry point's own Hydra config, and render the launch's Kubernetes objects."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from omegaconf import OmegaConf

from ldisc.config import compose

from . import eval as eval_k8s
from . import ingest as ingest_k8s
from . import pretrain as pretrain_k8s
from .common import config_map, job_name

ENTRIES = ("pretrain", "ingest", "eval")
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "LDISC_PATIENT_KEY_SECRET")


@dataclass
class Launch:
    """One launch: what to run (``entry`` with ``overrides``), where (``launch``), and its name."""
    entry: str
    launch: dict
    overrides: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return job_name(self.entry, self.launch.get("name"))

    @property
    def namespace(self) -> str:
        return str(self.launch["namespace"])


def split_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    """(launch overrides, entry-point overrides): ``launch.*`` and ``launch=NAME`` go to the launch group."""
    launch, entry = [], []
    for o in overrides:
        key = o.lstrip("+~").split("=", 1)[0]
        if key == "launch":
            launch.append("launch=" + o.split("=", 1)[1])
        elif key.startswith("launch."):
            launch.append(o)
        else:
            entry.append(o)
    return launch, entry


def compose_launch(entry: str, overrides: list[str], **set_keys) -> Launch:
    """The ``launch`` group (``configs/launch/``) with its overrides; ``set_keys`` win (CLI flags)."""
    if entry not in ENTRIES:
        raise ValueError(f"entry must be one of {', '.join(ENTRIES)}, got {entry!r}")
    launch_o, entry_o = split_overrides(overrides)
    group = next((o.split("=", 1)[1] for o in launch_o if o.startswith("launch=")), "default")
    values = [o for o in launch_o if not o.startswith("launch=")]
    cfg = compose(None, [f"+launch={group}", *values])
    launch = OmegaConf.to_container(cfg.launch, resolve=True)
    launch.update({k: v for k, v in set_keys.items() if v is not None})
    if launch["procs_per_node"] is None:
        launch["procs_per_node"] = max(int(launch["gpus_per_node"]), 1)
    return Launch(entry, launch, entry_o)


def entry_config(ln: Launch, pod_overrides: list[str]) -> dict:
    """The entry point's own config composed with the overrides the pods run with (bad keys fail here)."""
    if ln.entry == "pretrain":
        return OmegaConf.to_container(compose("pretrain", pod_overrides), resolve=True)
    if ln.entry == "eval":
        from ldisc.eval.cli import compose_config

        return OmegaConf.to_container(compose_config(pod_overrides), resolve=True)
    return {"argv": ["ldisc-shard", *pod_overrides]}


def render(ln: Launch) -> list[dict]:
    """Every object of the launch, in apply order (ConfigMap first)."""
    name, ns, launch = ln.name, ln.namespace, ln.launch
    if ln.entry == "pretrain":
        pod_overrides = pretrain_k8s.pod_overrides(name, launch, ln.overrides)
    elif ln.entry == "eval":
        pod_overrides = eval_k8s.eval_overrides(name, launch, ln.overrides)
    else:
        if ln.overrides:
            raise ValueError(f"ingest takes launch.ingest.* keys, not {ln.overrides[0]!r}")
        pod_overrides = ingest_k8s.ingest_args(launch, name)
    files = {f"{ln.entry}.yaml": entry_config(ln, pod_overrides), "launch.yaml": launch}
    cm = config_map(name, ns, ln.entry, files)
    cm_name = cm["metadata"]["name"]
    if ln.entry == "pretrain":
        objects = pretrain_k8s.render(name, ns, launch, ln.overrides, cm_name)
    elif ln.entry == "eval":
        objects = eval_k8s.render(name, ns, launch, ln.overrides, cm_name)
    else:
        objects = ingest_k8s.render(name, ns, launch, cm_name)
    return [cm, *objects]


def environment_secrets() -> list[str]:
    """Secret values in this process's environment; none of them may appear in a rendered byte."""
    return [os.environ[k] for k in SECRET_ENV if os.environ.get(k)]
