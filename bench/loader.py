"""Loader throughput, in one run:

- **views**: batches of LD views per second per loader worker at 448 px (``data.views_device=loader``),
  against read + PNG decode alone (``views_device=accelerator``: what a worker still does), and the
  views made by the trainer for a whole decoded batch on the training device (``ldisc.views_batch``);
- **workers per GPU**: loader workers one GPU step of ``--gpu-step-seconds`` (15 ms at 448 px, batch 4:
  a stand-in until a measured GPU figure replaces it) needs on either path; on this CPU, the step
  time of ``bench/step.py`` (measured unless ``--step-seconds`` is given, ``--skip-cpu-step`` skips it);
- **object store** (``--s3``): a local S3 server (moto) with ``--s3-latency-ms`` added to every request;
  samples/s and GET requests per 1,000 samples for ranged GETs (one per sample) against the shard cache
  (whole shards, prefetched), and the data wait as a share of a simulated step of ``--sim-step-seconds``.

Usage: python bench/loader.py [--images 64] [--batch 4] [--gpu-step-seconds 0.015] [--s3] [--device cuda]
Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _measure import run_isolated  # noqa: E402
from ingest import make_sources  # noqa: E402


def timed_batches(loader, max_batches: int = 10**9) -> tuple[list, float, float, float]:
    """Batches, wall seconds, CPU seconds of this process (= of the worker with num_workers=0) and the
    shortest wall time of one batch. On a shared machine CPU time is closer to a batch's cost than wall
    time, and the shortest batch closest to what an unshared core does."""
    t0, c0, out, shortest = time.perf_counter(), time.process_time(), [], float("inf")
    last = t0
    for batch in loader:
        now = time.perf_counter()
        if out:                                  # the first batch also opens the dataset
            shortest = min(shortest, now - last)
        last = now
        out.append(batch)
        if len(out) == max_batches:
            break
    return out, time.perf_counter() - t0, time.process_time() - c0, shortest


def rate(n: int, seconds: float) -> float:
    return n / max(seconds, 1e-9)


def per_worker(n: int, wall: float, cpu: float, shortest: float) -> dict:
    return {"batches_per_second": round(rate(n, wall), 2), "batches_per_cpu_second": round(rate(n, cpu), 2),
            "best_batches_per_second": round(1 / shortest, 2), "cpu_seconds_per_batch": round(cpu / n, 4)}


def workers_needed(step_seconds: float, batches_per_second_per_worker: float) -> int:
    return max(1, math.ceil((1 / step_seconds) / batches_per_second_per_worker))


def device_views_rate(decoded: list[dict], cfg, device: str, repeats: int) -> dict:
    """Views of whole decoded batches on ``device`` (the trainer's half), and the host-side share of it
    (the per-pair random draws, which stay on the CPU whatever the device)."""
    import torch

    from ldisc.views import VIEW_KEYS
    from ldisc.views_batch import pair_draws, views_on_device

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    views_on_device(decoded[0], cfg, device)                          # warm-up
    sync()
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(repeats):
        views_on_device(decoded[i % len(decoded)], cfg, device)
    sync()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    c0 = time.process_time()
    for i in range(repeats):
        pair_draws(decoded[i % len(decoded)]["view_seeds"].tolist(), cfg)
    draw_cpu = time.process_time() - c0
    agreement = {}
    if device != "cpu":                      # the same batch on the CPU: how far the device's views are
        got, want = views_on_device(decoded[0], cfg, device), views_on_device(decoded[0], cfg, "cpu")
        agreement = {"max_abs_diff_vs_cpu": max(float((got[k].cpu() - want[k]).abs().max()) for k in VIEW_KEYS)}
    return {**agreement, "device": device, "threads": torch.get_num_threads(),
            "batches_per_second": round(rate(repeats, seconds), 2),
            "seconds_per_batch": round(seconds / repeats, 4), "cpu_seconds_per_batch": round(cpu / repeats, 4),
            "draws_cpu_seconds_per_batch (done by the worker)": round(draw_cpu / repeats, 5)}


def consume(loader, sim_step: float) -> dict:
    """A trainer that takes ``sim_step`` seconds per step: how long it waits for data."""
    wait, n, t_start = 0.0, 0, time.perf_counter()
    it = iter(loader)
    while True:
        t0 = time.perf_counter()
        try:
            next(it)
        except StopIteration:
            break
        wait += time.perf_counter() - t0
        n += 1
        time.sleep(sim_step)
    total = time.perf_counter() - t_start
    return {"step_seconds": sim_step, "batches": n, "wait_seconds": round(wait, 3), "wall_seconds": round(total, 3),
            "data_wait_share": round(wait / total, 3)}


def _clear(cache: str | None) -> None:
    """An empty (cold) shard cache."""
    if cache and Path(cache).is_dir():
        for p in Path(cache).iterdir():
            p.unlink()


def read_only(url: str, cache: str | None, args) -> dict:
    """One reader fetching every sample's PNG bytes in epoch order, no decode: the I/O path alone."""
    from ldisc.data import StreamLoader, open_store
    from ldisc.data.shard_cache import open_reader, upcoming_shards

    loader = StreamLoader(url, batch_size=args.batch, world_size=1, rank=0, cache_dir=cache,
                          cache_limit_gb=args.cache_limit_gb)
    plan = loader.plan()
    stream = loader.stream(plan)
    steps = range(plan.n_steps)
    t0 = time.perf_counter()
    reader = open_reader(open_store(url), stream.table, stream.cache, lambda: upcoming_shards(stream.table, plan, steps))
    n = 0
    for step in steps:
        for row in plan.order[step * plan.per_rank:(step + 1) * plan.per_rank]:
            reader.png_bytes(int(row))
            n += 1
    seconds = time.perf_counter() - t0
    reader.close()
    return {"samples": n, "samples_per_second": round(rate(n, seconds), 1)}


def s3_bench(src: Path, tmp: Path, args) -> dict:
    """Ranged GETs vs the shard cache against a local S3 server with latency."""
    from _s3_server import local_s3
    from ldisc.data import StreamLoader
    from sharding.ingest import IngestOptions, ingest

    url = "s3://ldisc-bench/ds"
    out = {"latency_ms_per_request": args.s3_latency_ms, "shard_samples": args.shard_samples,
           "loader_workers": args.s3_workers, "output": "decoded (read + decode, views_device=accelerator)"}
    with local_s3("ldisc-bench", latency_s=0.0) as s3:
        ingest(IngestOptions(source=str(src), dataset=url, site="bench", modality="fundus", workers=2, progress=False,
                             shard_samples=args.shard_samples, quarantine_report=str(tmp / "q3.jsonl")),
               b"bench-secret-0123456789")
        s3.meter.latency_s = args.s3_latency_ms / 1000
        for name, cache in (("ranged", None), ("cached", str(tmp / "cache"))):
            kw = dict(batch_size=args.batch, output="decoded", num_workers=args.s3_workers, cache_dir=cache,
                      cache_limit_gb=args.cache_limit_gb, world_size=1, rank=0)
            _clear(cache)
            loader = StreamLoader(url, **kw)
            s3.meter.reset()
            batches, seconds, _, _ = timed_batches(loader)
            samples, gets = len(batches) * 2 * args.batch, s3.gets()
            out[name] = {"samples": samples, "samples_per_second": round(rate(samples, seconds), 1),
                         "get_requests": gets, "ranged_gets": s3.counts["GET ranged"],
                         "gets_per_1000_samples": round(1000 * gets / max(samples, 1), 1)}
            if cache:
                out[name]["cache_events"] = dict(loader.shard_cache_stats)
            _clear(cache)
            out[name]["read_only_one_reader"] = read_only(url, cache, args)
            _clear(cache)
            out[name]["simulated_step"] = consume(StreamLoader(url, **kw), args.sim_step_seconds)
    out["get_reduction"] = round(out["ranged"]["get_requests"] / max(out["cached"]["get_requests"], 1), 1)
    out["speedup"] = round(out["cached"]["samples_per_second"] / max(out["ranged"]["samples_per_second"], 1e-9), 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4, help="pairs per step (the paper's batch 4)")
    ap.add_argument("--size", type=int, default=448)
    ap.add_argument("--gpu-step-seconds", type=float, default=0.015,
                    help="GPU step time at 448 px, batch 4 (replace with a measured figure when a GPU is lent)")
    ap.add_argument("--device", default="cpu", help="where the trainer makes the views (cpu | cuda)")
    ap.add_argument("--trainer-threads", type=int, default=1, help="intra-op threads of the trainer's view making")
    ap.add_argument("--step-seconds", type=float, help="this CPU's step time: skip measuring bench/step.py")
    ap.add_argument("--skip-cpu-step", action="store_true", help="no CPU step figure at all")
    ap.add_argument("--step-width", default="tiny")
    ap.add_argument("--s3", action="store_true", help="also the object-store comparison (moto, 127.0.0.1)")
    ap.add_argument("--s3-latency-ms", type=float, default=20.0)
    ap.add_argument("--only-s3", action="store_true", help="the object-store comparison alone")
    ap.add_argument("--s3-workers", type=int, default=2)
    ap.add_argument("--shard-samples", type=int, default=16)
    ap.add_argument("--cache-limit-gb", type=float, default=1.0)
    ap.add_argument("--sim-step-seconds", type=float, default=0.1)
    args = ap.parse_args()
    import torch

    from ldisc.data import StreamLoader
    from ldisc.views import ViewConfig
    from sharding.ingest import IngestOptions, ingest

    trainer_threads = args.trainer_threads
    torch.set_num_threads(1)  # one loader worker = one core
    cfg = ViewConfig(view_side=args.size)
    s3 = None
    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
        tmp = Path(tmp)
        (tmp / "src").mkdir()
        make_sources(tmp / "src", args.images, "fundus")
        if args.only_s3:
            print(json.dumps({"bench": "loader", "images": args.images, "load_average_1min": round(os.getloadavg()[0], 2),
                              "object_store": s3_bench(tmp / "src", tmp, args)}))
            return
        ingest(IngestOptions(source=str(tmp / "src"), dataset=str(tmp / "ds"), site="bench", modality="fundus",
                             workers=2, progress=False, quarantine_report=str(tmp / "q.jsonl")),
               b"bench-secret-0123456789")
        raw = timed_batches(StreamLoader(tmp / "ds", batch_size=args.batch, output="images"))
        decoded = timed_batches(StreamLoader(tmp / "ds", batch_size=args.batch, output="decoded", view_config=cfg))
        views = timed_batches(StreamLoader(tmp / "ds", batch_size=args.batch, view_config=cfg))
        torch.set_num_threads(trainer_threads)
        on_device = device_views_rate(decoded[0], cfg, args.device, repeats=3 * len(decoded[0]))
        torch.set_num_threads(1)
        if args.s3:
            s3 = s3_bench(tmp / "src", tmp, args)
    rates = {name: {"best": 1 / shortest, "cpu": rate(len(b), cpu), "wall": rate(len(b), wall)}
             for name, (b, wall, cpu, shortest) in (("views", views), ("decoded", decoded))}
    step = args.gpu_step_seconds
    out = {
        "bench": "loader", "images": args.images, "stored_px": 512, "view_px": args.size, "batch_pairs": args.batch,
        "cpus": os.cpu_count(), "threads_per_worker": 1, "load_average_1min": round(os.getloadavg()[0], 2),
        "raw_read_decode_per_worker": per_worker(len(raw[0]), *raw[1:]),
        "decode_only_per_worker (views_device=accelerator)": per_worker(len(decoded[0]), *decoded[1:]),
        "ld_views_per_worker (views_device=loader)": per_worker(len(views[0]), *views[1:]),
        "views_on_training_device": on_device,
        "views_vs_decode_only": round(rates["views"]["cpu"] / rates["decoded"]["cpu"], 4),
        "gpu_step_seconds": step, "gpu_step_source": "--gpu-step-seconds (projected, not measured)",
        "workers_per_gpu": {f"from_{basis}": {"loader": workers_needed(step, rates["views"][basis]),
                                             "accelerator": workers_needed(step, rates["decoded"][basis])}
                            for basis in ("best", "cpu", "wall")},
    }
    if not args.skip_cpu_step:
        if args.step_seconds is None:
            step = run_isolated(str(Path(__file__).resolve().parent / "step.py"), "--one", str(args.size),
                                str(args.batch), "2", "0", "--width", args.step_width, "--steps", "2")
            step_seconds = step["seconds_per_step"]
            source = f"bench/step.py --one {args.size} {args.batch} 2 0 --width {args.step_width}"
        else:
            step_seconds, source = args.step_seconds, "--step-seconds"
        out.update(training_step_seconds=step_seconds, step_source=source,
                   workers_to_feed_one_step=workers_needed(step_seconds, rates["views"]["cpu"]))
    if s3 is not None:
        out["object_store"] = s3
    print(json.dumps(out))


if __name__ == "__main__":
    main()
