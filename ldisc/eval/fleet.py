"""The evaluation fleet: every (checkpoint, task, protocol, seed) is one Ray task; the driver records.

``init_ray`` starts a local Ray bound to 127.0.0.1 with token authentication (``ray_local``), or connects to an
existing cluster (``address``). It submits at most as many runs as the cluster has room for, so that
"running" means running, and waits for them one by one. Each finished run's row is written by the
driver at once (see ``store``), so a crash loses only runs in flight. A run that raises, or whose
worker process dies, is resubmitted up to ``retries`` times and then recorded as failed. Runs whose
``run_id`` already has an ``ok`` row are skipped: re-running a fleet recomputes nothing done.

``run_serial`` executes the same runs one after another in this process, with the same recording
(for benchmarks and debugging).
"""
from __future__ import annotations

import json
import logging
import os
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from itertools import product

from ldisc.eval.monitor import FleetMonitor
from ldisc.eval.overlays import save_overlays
from ldisc.eval.protocol import PROTOCOLS
from ldisc.eval.ray_local import start_local_ray
from ldisc.eval.runs import CheckpointRef, RunSpec, base_row, execute_run, versions
from ldisc.eval.store import ResultsStore
from ldisc.eval.tasks import Task, task_methods

log = logging.getLogger(__name__)


@dataclass
class FleetConfig:
    """How runs are scheduled (``fleet`` and ``ray`` in configs/eval.yaml)."""

    retries: int = 2                   # extra attempts for a run that fails or whose worker dies
    cpus_per_run: float = 1.0
    gpus_per_run: float = 0.0
    address: str | None = None         # existing Ray cluster ("auto", "ray://host:10001", …); None: local Ray
    num_cpus: int | None = None        # size of the local Ray (None: all cores)
    num_gpus: int | None = None
    max_in_flight: int | None = None   # None: as many as the cluster's CPUs (GPUs) allow
    warm_start: bool = True            # import torch & co. in one worker per slot right after ray.init
    object_store_mb: int | None = None
    progress: bool = True
    metrics_port: int | None = None
    auth: bool = True                  # token authentication for the local Ray (ray.auth)


@dataclass
class FleetSummary:
    planned: int = 0
    skipped: int = 0
    done: int = 0
    failed: int = 0
    retried: int = 0
    wall_s: float = 0.0
    failures: list[str] = field(default_factory=list)


def plan_runs(checkpoints: list[CheckpointRef], tasks: list[Task], protocols: list[str], seeds: list[int],
              protocol_cfg: dict, data_cfg: dict, results_dir: str | None, threads: int = 1) -> list[RunSpec]:
    """The grid checkpoints × tasks × protocols × seeds, in that nesting order (an application task
    varies its methods instead of the protocols: see ``tasks.APP_METHODS``)."""
    bad = [p for p in protocols if p not in PROTOCOLS]
    if bad:
        raise ValueError(f"unknown protocols {bad}; choose from {PROTOCOLS}")
    return [RunSpec(ck, task.name, proto, int(seed), dict(protocol_cfg), dict(data_cfg), results_dir, threads)
            for ck, task in product(checkpoints, tasks)
            for proto, seed in product(task_methods(task, protocols), seeds)]


class _Recorder:
    """Writes rows and overlays of finished runs; keeps the summary and the monitor in step."""

    def __init__(self, store: ResultsStore, monitor: FleetMonitor, summary: FleetSummary, retries: int):
        self.store, self.monitor, self.summary, self.retries = store, monitor, summary, retries

    def success(self, spec: RunSpec, attempt: int, row: dict, overlays: list[dict]) -> None:
        save_overlays(self.store.dir / "overlays" / spec.run_id, overlays, row.get("threshold") or 0.5)
        self.store.write(row | {"attempt": attempt})
        self.summary.done += 1
        self.monitor.finished(True, row["wall_s"])

    def failure(self, spec: RunSpec, attempt: int, first_attempt: int, err: BaseException, seconds: float) -> bool:
        """Record a failed attempt; True if the run should be tried again."""
        if attempt - first_attempt < self.retries:
            log.warning("run %s (%s) attempt %d failed, retrying: %s", spec.run_id, spec.task, attempt, err)
            self.summary.retried += 1
            self.monitor.retried()
            return True
        message = "".join(traceback.format_exception_only(type(err), err)).strip()[-2000:]
        self.store.write(base_row(spec) | {"status": "failed", "attempt": attempt, "wall_s": seconds,
                                           "error": message, "versions": json.dumps(versions(), sort_keys=True)})
        self.summary.failed += 1
        self.summary.failures.append(f"{spec.checkpoint.label} {spec.task} {spec.protocol} seed={spec.seed}: {message}")
        self.monitor.finished(False, seconds)
        return False


def _pending_specs(specs: list[RunSpec], store: ResultsStore, summary: FleetSummary,
                   monitor: FleetMonitor) -> deque:
    done = store.done_ids()
    first = {s.run_id: store.failed_attempts(s.run_id) + 1 for s in specs if s.run_id not in done}
    todo = deque((s, first[s.run_id], first[s.run_id]) for s in specs if s.run_id not in done)
    summary.planned, summary.skipped = len(specs), len(specs) - len(todo)
    monitor.skipped(summary.skipped)
    return todo


def run_serial(specs: list[RunSpec], store: ResultsStore, monitor: FleetMonitor, retries: int = 0) -> FleetSummary:
    """The same runs, one after another in this process."""
    summary, t0 = FleetSummary(), time.perf_counter()
    rec = _Recorder(store, monitor, summary, retries)
    todo = _pending_specs(specs, store, summary, monitor)
    while todo:
        spec, attempt, first = todo.popleft()
        while True:
            monitor.started()
            start = time.perf_counter()
            try:
                row, overlays = execute_run(spec)
            except Exception as err:  # noqa: BLE001 - any failure of a run is recorded, not fatal
                if rec.failure(spec, attempt, first, err, time.perf_counter() - start):
                    attempt += 1
                    continue
            else:
                rec.success(spec, attempt, row, overlays)
            break
    summary.wall_s = time.perf_counter() - t0
    return summary


def init_ray(cfg: FleetConfig) -> bool:
    """Connect to ``cfg.address`` or start a local Ray on 127.0.0.1 (see ``ray_local``); True if this call started Ray."""
    from ldisc.cli_errors import require

    ray = require("ray", "eval")

    if ray.is_initialized():
        return False
    if cfg.address:
        ray.init(address=cfg.address, log_to_driver=False)
        return False
    kwargs = {"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus, "log_to_driver": False}
    if cfg.object_store_mb:
        kwargs["object_store_memory"] = int(cfg.object_store_mb) << 20
    start_local_ray(auth=cfg.auth, **{k: v for k, v in kwargs.items() if v is not None})
    if cfg.warm_start:
        warm_workers(cfg)
    return True


def _warm_worker() -> int:
    """Import what a run needs (torch, the model, the generator) so that the first run does not pay for it."""
    import ldisc.eval.runs  # noqa: F401
    import ldisc.synth  # noqa: F401

    return os.getpid()


def warm_workers(cfg: FleetConfig) -> int:
    """Start one worker per run slot and import the run's modules there; returns how many processes."""
    import ray

    warm = ray.remote(_warm_worker).options(num_cpus=cfg.cpus_per_run, num_gpus=cfg.gpus_per_run)
    return len(set(ray.get([warm.remote() for _ in range(_capacity(cfg))])))


def _capacity(cfg: FleetConfig) -> int:
    import ray

    if cfg.max_in_flight:
        return int(cfg.max_in_flight)
    res = ray.cluster_resources()
    slots = [res.get("CPU", 1) / cfg.cpus_per_run] if cfg.cpus_per_run > 0 else []
    if cfg.gpus_per_run > 0:
        slots.append(res.get("GPU", 0) / cfg.gpus_per_run)
    return max(1, int(min(slots) if slots else 1))


def run_fleet(specs: list[RunSpec], store: ResultsStore, cfg: FleetConfig, monitor: FleetMonitor) -> FleetSummary:
    """Run ``specs`` as Ray tasks on an already initialised Ray (see :func:`init_ray`)."""
    import ray

    summary, t0 = FleetSummary(), time.perf_counter()
    rec = _Recorder(store, monitor, summary, cfg.retries)
    todo = _pending_specs(specs, store, summary, monitor)
    remote = ray.remote(execute_run).options(num_cpus=cfg.cpus_per_run, num_gpus=cfg.gpus_per_run,
                                             max_retries=0, num_returns=1)
    capacity = _capacity(cfg)
    pending: dict = {}  # ObjectRef -> (spec, attempt, first attempt, submit time)
    try:
        while todo or pending:
            while todo and len(pending) < capacity:
                spec, attempt, first = todo.popleft()
                pending[remote.remote(spec)] = (spec, attempt, first, time.perf_counter())
                monitor.started()
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in ready:
                spec, attempt, first, submitted = pending.pop(ref)
                try:
                    row, overlays = ray.get(ref)
                except Exception as err:  # noqa: BLE001 - task errors and dead workers alike
                    if rec.failure(spec, attempt, first, err, time.perf_counter() - submitted):
                        todo.appendleft((spec, attempt + 1, first))
                else:
                    rec.success(spec, attempt, row, overlays)
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    summary.wall_s = time.perf_counter() - t0
    return summary
