"""``k8s/``: the committed platform files are what ``launcher.k8s.assets`` renders, they validate strictly,
the RBAC is least-privilege, the Dockerfile builds a non-root non-editable image, and a wheel carries
every config so ``ldisc.config.config_dir`` finds them in a non-editable install."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

import ldisc.config
from launcher.k8s import assets
from launcher.validate import CRD_KINDS, crd_dir, newest_k8s_version, semantic_problems, validate_object

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"


def test_committed_files_are_current():
    for name, text in assets.files().items():
        assert (K8S / name).read_text() == text, f"k8s/{name} is stale: python -m launcher.k8s.assets k8s"


@pytest.mark.parametrize("version", ["1.29", newest_k8s_version()])
def test_platform_objects_validate(version):
    objects = [o for name in ("namespace-rbac.yaml", "clustertrainingruntime.yaml", "prometheusrule.yaml")
               for o in yaml.safe_load_all((K8S / name).read_text())]
    assert [o["kind"] for o in objects] == ["Namespace", "ServiceAccount", "Role", "RoleBinding",
                                            "ClusterTrainingRuntime", "PrometheusRule"]
    if not crd_dir().is_dir():
        objects = [o for o in objects if o["kind"] not in CRD_KINDS]
        print(f"CRD schemas not found at {crd_dir()}: ClusterTrainingRuntime/PrometheusRule not checked")
    assert [e for o in objects for e in validate_object(o, version)] == []
    assert semantic_problems(objects) == []


def test_rbac_is_least_privilege():
    role = next(o for o in yaml.safe_load_all((K8S / "namespace-rbac.yaml").read_text()) if o["kind"] == "Role")
    granted = {(g, r): set(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    assert granted[("", "pods/log")] == granted[("", "pods")] == {"get", "list", "watch"}
    assert granted[("", "pods/proxy")] == {"get"}          # status: the checkpoint-step gauge, read-only
    assert {"get", "list", "watch"} <= granted[("batch", "jobs")]
    for crd in (("kubeflow.org", "pytorchjobs"), ("trainer.kubeflow.org", "trainjobs"), ("ray.io", "rayjobs")):
        assert {"get", "list", "watch"} <= granted[crd]
    everything = {v for verbs in granted.values() for v in verbs}
    assert "*" not in everything and not {"update", "patch", "escalate", "bind", "impersonate"} & everything
    assert not any(r in ("secrets", "*") or g == "*" for g, r in granted)
    assert not any("pods/exec" in r or "pods/attach" in r for _, r in granted)


def test_dashboard_and_alerts_cover_the_asked_signals():
    exprs = " ".join(t["expr"] for p in json.loads((K8S / "grafana-dashboard.json").read_text())["panels"]
                     for t in p["targets"])
    for name in ("ldisc_train_step_duration_seconds", "rate(ldisc_train_images_total", "ldisc_train_loss",
                 "ldisc_train_data_wait_duration_seconds", "ldisc_train_bank_fill_ratio", "ldisc_shard_quarantined",
                 "ldisc_eval_runs", "ldisc_eval_run_retries_total", "ldisc_train_last_success_timestamp_seconds"):
        assert name in exprs
    assert "per_second" not in exprs
    rule = yaml.safe_load((K8S / "prometheusrule.yaml").read_text())
    alerts = {r["alert"]: r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert "increase(ldisc_train_steps_total" in alerts["LdiscTrainingStalled"]
    assert "ldisc_train_loss != ldisc_train_loss" in alerts["LdiscLossNaN"]          # NaN is the only x != x
    assert "resets(ldisc_train_steps_total" in alerts["LdiscTrainingRestarted"]


def test_dockerfile_is_non_root_non_editable_with_cpu_and_cuda_variants():
    text = (K8S / "Dockerfile").read_text()
    assert "ARG VARIANT=cpu" in text and "FROM base-${VARIANT}" in text and "AS base-cuda" in text
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and all(not u.startswith(("root", "0")) for u in users)
    assert "ARG UID=1000" in text                  # = launch.uid, the pods' runAsUser
    installs = re.findall(r"pip install[^\n]*", text)
    assert installs and not any(" -e " in i or "--editable" in i for i in installs)


def _config_files() -> set[str]:
    return {str(p.relative_to(REPO)) for p in (REPO / "configs").rglob("*.yaml")}


def test_every_config_is_listed_as_wheel_data():
    data_files = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    listed = {str(p.relative_to(REPO)) for globs in data_files.values() for g in globs for p in REPO.glob(g)}
    assert _config_files() == listed
    for target, globs in data_files.items():
        assert all(target == "share/ldisc/" + str(Path(g).parent) for g in globs)


@pytest.mark.slow
def test_a_wheel_carries_the_configs_and_config_dir_finds_them(tmp_path, monkeypatch):
    src = tmp_path / "src"
    tracked = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.split()
    for rel in tracked:
        if (REPO / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, src / rel)
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist")], check=True, capture_output=True, timeout=300)
    wheel, = (tmp_path / "dist").glob("ldisc-*.whl")
    prefix = tmp_path / "prefix"
    with zipfile.ZipFile(wheel) as zf:
        for member in zf.namelist():
            if "/data/share/ldisc/configs/" in member:
                dest = prefix / member.split("/data/", 1)[1]
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(zf.read(member))
    got = {str(p.relative_to(prefix / "share" / "ldisc")) for p in prefix.rglob("*.yaml")}
    assert got == _config_files()
    # as installed: the module lives in site-packages (no configs/ beside it), the data under the prefix
    monkeypatch.delenv("LDISC_CONFIG_DIR", raising=False)
    monkeypatch.setattr(ldisc.config, "__file__", str(tmp_path / "site-packages" / "ldisc" / "config.py"))
    monkeypatch.setattr(sys, "prefix", str(prefix))
    assert ldisc.config.config_dir() == prefix / "share" / "ldisc" / "configs"
    assert ldisc.config.compose("pretrain", ["+launch=default"]).launch.nodes == 1
