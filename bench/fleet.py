"""bench/fleet: 8 small evaluation runs on a 2-CPU local Ray fleet vs. the same runs serially in one process.

Prints one JSON object:
- ``serial_s``: the 8 runs one after another in this process (1 torch thread, like each fleet worker);
- ``fleet_s``: the same runs through ``run_fleet`` on a local Ray with 2 CPUs (1 CPU per run), from the
  first submission to the last recorded row; ``ray_init_s`` and ``ray_shutdown_s`` are reported apart;
- ``speedup`` = serial_s / fleet_s (target ≥ 1.7), ``speedup_with_ray_start`` counts ray.init too;
- ``overhead_per_run_s`` = (2 × fleet_s − Σ in-worker run time) / runs: the CPU-seconds per run spent
  outside the run itself (scheduling, cold worker start with its imports, transfers, driver recording);
- ``serial_2threads_s``: the serial runs with 2 torch threads, for reference;
- ``load_avg``: the machine's 1-minute load average before and after (other jobs skew timings).

Usage: python bench/fleet.py [--runs 8] [--epochs 8]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import asdict

from ldisc.eval.fleet import FleetConfig, init_ray, plan_runs, run_fleet, run_serial
from ldisc.eval.ray_local import stop_local_ray
from ldisc.eval.monitor import FleetMonitor
from ldisc.eval.protocol import ProtocolConfig
from ldisc.eval.runs import resolve_checkpoint
from ldisc.eval.store import ResultsStore
from ldisc.eval.tasks import expand_tasks

TASKS = ["synth_idrid_disc@16", "synth_rite_vessel@16", "synth_jsrt_lung@16", "synth_jsrt_heart@16"]


def _specs(out: str, runs: int, epochs: int, threads: int):
    proto = asdict(ProtocolConfig(epochs_frozen=epochs, epochs_finetune=epochs // 2, epochs_scratch=epochs,
                                  device="cpu", overlays=2))
    data = {"input_side": 64, "val_fraction": 0.2, "max_test": 8, "random_width": "tiny", "roots": {}}
    seeds = list(range((runs + len(TASKS) - 1) // len(TASKS)))
    specs = plan_runs([resolve_checkpoint("random")], expand_tasks(TASKS), ["frozen"], seeds, proto, data, out, threads)
    return specs[:runs]


def _serial(runs: int, epochs: int, threads: int) -> tuple[float, float]:
    import torch

    with tempfile.TemporaryDirectory() as out:
        store = ResultsStore(out)
        specs = _specs(out, runs, epochs, threads)
        summary = run_serial(specs, store, FleetMonitor(len(specs), progress=False))
        assert summary.done == runs, summary
        torch.set_num_threads(os.cpu_count() or 1)
        return summary.wall_s, sum(r["wall_s"] for r in store.rows("ok"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=8)
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    serial_s, serial_work = _serial(args.runs, args.epochs, threads=1)
    serial2_s, _ = _serial(args.runs, args.epochs, threads=2)

    cfg = FleetConfig(num_cpus=2, cpus_per_run=1, retries=0, progress=False)
    t0 = time.perf_counter()
    init_ray(cfg)
    ray_init_s = time.perf_counter() - t0
    try:
        with tempfile.TemporaryDirectory() as out:
            store = ResultsStore(out)
            specs = _specs(out, args.runs, args.epochs, threads=1)
            summary = run_fleet(specs, store, cfg, FleetMonitor(len(specs), progress=False))
            assert summary.done == args.runs, summary
            fleet_work = sum(r["wall_s"] for r in store.rows("ok"))
            pids = len({r["pid"] for r in store.rows("ok")})
    finally:
        t1 = time.perf_counter()
        stop_local_ray()
        ray_shutdown_s = time.perf_counter() - t1
    fleet_s = summary.wall_s
    print(json.dumps({
        "bench": "fleet", "runs": args.runs, "cpus": 2, "epochs_frozen": args.epochs, "input_px": 64,
        "serial_s": round(serial_s, 2), "serial_2threads_s": round(serial2_s, 2), "fleet_s": round(fleet_s, 2),
        "ray_init_s": round(ray_init_s, 2), "ray_shutdown_s": round(ray_shutdown_s, 2),
        "speedup": round(serial_s / fleet_s, 2),
        "speedup_with_ray_start": round(serial_s / (fleet_s + ray_init_s), 2),
        "speedup_vs_serial_2threads": round(serial2_s / fleet_s, 2),
        "mean_run_s_serial": round(serial_work / args.runs, 2), "mean_run_s_in_worker": round(fleet_work / args.runs, 2),
        "overhead_per_run_s": round((2 * fleet_s - fleet_work) / args.runs, 2),
        "worker_processes": pids, "load_avg_before": round(load_before, 2), "load_avg_after": round(os.getloadavg()[0], 2),
    }, indent=1))


if __name__ == "__main__":
    main()
