"""Every run records itself: what ran, with which settings, on what, from which code.

Into the run directory (``ldisc-pretrain``'s ``run_dir``, ``ldisc-eval``'s ``out_dir``, an ingested
dataset's ``logs/``) go

    config.yaml          the resolved config of this invocation (every default filled in)
    run.json             program, overrides, versions (ldisc, torch, deepspeed, ray, python), git revision
                         of the ldisc source where it is a checkout, host, world size, start time (UTC)
    run_history.jsonl    one run.json line per invocation (a resumed run adds a line)

``ldisc-shard ingest`` puts the same record (plus its counts) into the dataset as
``logs/ingest-v<version>.json`` (:func:`record_into_store`; local folder or S3 alike).

In a Hydra multirun each job's folder (``hydra.sweep.dir``/N) gets ``run_dir.txt`` (the absolute run
directory) and a ``run`` symlink to it, so a sweep's job folders point at their runs.
"""
from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

RECORD_FILE = "run.json"
CONFIG_FILE = "config.yaml"
HISTORY_FILE = "run_history.jsonl"
POINTER_FILE = "run_dir.txt"
POINTER_LINK = "run"
PACKAGES = ("ldisc", "torch", "deepspeed", "ray")


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed distribution versions (None where one is not installed), plus Python's."""
    found: dict[str, str | None] = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    if found.get("ldisc") is None:
        from ldisc import __version__
        found["ldisc"] = __version__
    found["python"] = platform.python_version()
    return found


def git_revision(path: str | Path | None = None) -> dict | None:
    """``{"commit": sha, "dirty": bool}`` of the git checkout holding ``path`` (default: the ldisc
    source), or None where it is not in one (an installed wheel) or git is missing."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        top = Path(git("rev-parse", "--show-toplevel")).resolve()
        if not where.resolve().is_relative_to(top):
            return None
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return None


def hydra_overrides() -> list[str] | None:
    """The command-line overrides of the running Hydra job, or None outside one."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return list(HydraConfig.get().overrides.task)


def build_record(prog: str, overrides: list[str] | None, world_size: int = 1, extra: dict | None = None) -> dict:
    return {
        "program": prog,
        "overrides": overrides if overrides is not None else hydra_overrides() or [],
        "argv": sys.argv[1:],
        "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": package_versions(),
        "git": git_revision(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "world_size": int(world_size),
        "cwd": os.getcwd(),
        **(extra or {}),
    }


def write_run_record(run_dir: str | Path, prog: str, cfg: DictConfig | dict | None = None,
                     overrides: list[str] | None = None, world_size: int = 1, extra: dict | None = None) -> dict:
    """Write ``config.yaml``, ``run.json`` and a ``run_history.jsonl`` line into ``run_dir``; in a Hydra
    multirun also point the job's folder at ``run_dir``. Call it on one rank. → the record."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    record = build_record(prog, overrides, world_size, extra)
    if cfg is not None:
        conf = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
        _atomic_write(run_dir / CONFIG_FILE, OmegaConf.to_yaml(conf, resolve=True))
    _atomic_write(run_dir / RECORD_FILE, json.dumps(record, indent=1) + "\n")
    with open(run_dir / HISTORY_FILE, "a") as fh:
        fh.write(json.dumps(record) + "\n")
    link_job_folder(run_dir)
    return record


def record_into_store(store, key: str, prog: str, extra: dict | None = None) -> dict:
    """Write a run record as the object ``key`` of a dataset store (``ldisc.data.store``). → the record."""
    record = build_record(prog, [], 1, extra)
    store.put_bytes(key, (json.dumps(record, indent=1) + "\n").encode())
    return record


def read_run_record(run_dir: str | Path) -> dict | None:
    path = Path(run_dir) / RECORD_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def link_job_folder(run_dir: str | Path) -> Path | None:
    """In a Hydra multirun: ``<job folder>/run_dir.txt`` and ``<job folder>/run`` → ``run_dir``."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    job_dir = Path(HydraConfig.get().runtime.output_dir)
    target = Path(run_dir).resolve()
    if job_dir.resolve() == target:
        return None
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / POINTER_FILE).write_text(f"{target}\n")
    link = job_dir / POINTER_LINK
    try:
        if link.is_symlink():
            link.unlink()
        link.symlink_to(target, target_is_directory=True)
    except OSError:          # a file system without symlinks: run_dir.txt says it
        pass
    return job_dir


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
