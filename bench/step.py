"""One LD training step (forward, backward, Adam): time, images/s and peak RSS for each memory and
speed lever, against this machine's convolution throughput. Prints one JSON object.

The setting is the issue's: stage 2 at 448×448, batch 4 (5×4 images per step), tiny width, 2 threads.
Each lever runs in its own process (honest peak RSS), once per allocator setting (``--malloc``):
``launcher`` — what ``ldisc-launch`` gives training processes on this machine
(:func:`ldisc.malloc.cpu_malloc_env`: tcmalloc where installed, else glibc kept), ``glibc_kept``
— glibc told to keep freed blocks, ``default`` — glibc as it comes:

* ``none``: the plain step (today's);
* ``checkpoint_decoder`` / ``checkpoint_all`` / ``checkpoint_selective``:
  ``engine.activation_checkpointing=decoder|all|selective``;
* ``channels_last``: ``engine.channels_last=true``;
* ``free_views``: the view images freed once they form the network input (what the trainer does);
* ``bf16_autocast``: the forward under bf16 autocast, the losses (NCE included) in fp32
  (``engine.precision=bf16-autocast``) — only where this CPU has native bf16; otherwise it is
  measured at a small size (``bf16_vs_fp32``) and the 448 px row says why it is left out.

Also: the target check (≤ 6 GB peak RSS with the malloc setting, ≤ 1.15× the fastest plain step),
the bf16-vs-fp32 loss difference over 50 steps at a small size, the largest batch that fits in
24 GB (extrapolated linearly from the peak RSS measured at two batch sizes) and the achieved
fraction of this machine's convolution throughput on the network's own layer shapes.

Times: wall seconds and ``cpu_seconds`` (process CPU time / threads). On a shared, loaded machine
the CPU time is the steadier figure; compare rows of one run, not runs.
Usage: python bench/step.py [--quick] [--width tiny] [--steps 2] [--device cuda --bf16]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import malloc_settings, peak_rss_bytes, run_isolated  # noqa: E402

LEVERS = {"none": {}, "checkpoint_decoder": {"checkpointing": "decoder"}, "checkpoint_all": {"checkpointing": "all"},
          "checkpoint_selective": {"checkpointing": "selective"}, "channels_last": {"channels_last": True}, "free_views": {"free_views": True},
          "bf16_autocast": {"bf16": True}}
COMMANDS = {"none": "", "checkpoint_decoder": "engine.activation_checkpointing=decoder",
            "checkpoint_all": "engine.activation_checkpointing=all",
            "checkpoint_selective": "engine.activation_checkpointing=selective", "channels_last": "engine.channels_last=true",
            "free_views": "(always on in the trainer unless a bank key encoder reads the views)",
            "bf16_autocast": "engine.precision=bf16-autocast"}
TARGET = {"peak_rss_gb": 6.0, "time_ratio": 1.15, "todays_fastest_seconds": 7.66, "todays_peak_gb_malloc": 15.5,
          "todays_default_malloc": {"seconds": 20.9, "peak_rss_gb": 10.8}}
GIB24 = 24.0
MALLOC_KEYS = ("launcher", "glibc_kept", "default")
# passive OpenMP waiting: on a busy shared CPU, spinning threads make 2-thread steps several times slower
BENCH_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}


def _batch(size: int, batch_size: int, seed: int):
    import torch

    from ldisc.views import ViewConfig, make_views_batch
    gen = torch.Generator().manual_seed(seed)
    pair = torch.rand(2, batch_size, 3, size, size, generator=gen)
    return make_views_batch(pair[0], pair[1], ViewConfig(view_side=size), gen)


class _Forward:
    """The network as the trainer's engine runs it: input memory format, forward autocast, outputs
    in fp32 for the losses (:class:`ldisc.train.engine.Engine`, without DeepSpeed)."""

    def __init__(self, model, device: str, bf16: bool, channels_last: bool):
        import torch
        self.model, self.device, self.channels_last = model, device, channels_last
        self.autocast = ((lambda: torch.autocast(torch.device(device).type, torch.bfloat16)) if bf16
                         else contextlib.nullcontext)

    def __call__(self, x, reduce=None):
        import torch

        from ldisc.model import LDOutput
        x = x.to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.autocast():
            if reduce is not None:
                return self.model(x, reduce=reduce)
            out = self.model(x)
        return LDOutput(out.embedding.float(), None if out.masks is None else out.masks.float())


def measure(size: int, batch_size: int, stage: int, width: str, steps: int, device: str = "cpu",
            bf16: bool = False, checkpointing: str = "none", channels_last: bool = False,
            free_views: bool = False, flops: bool = False, losses_only: bool = False) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ldisc.model import LDNet, set_activation_checkpointing
    from ldisc.objectives.objective import LDObjective, ObjectiveConfig

    torch.manual_seed(0)
    model = set_activation_checkpointing(LDNet(width, 32, 16 if stage == 2 else 0), checkpointing).to(device)
    forward = _Forward(model, device, bf16, channels_last)
    objective = LDObjective(ObjectiveConfig(stage=stage))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    fixed = None if losses_only else {k: v.to(device) for k, v in _batch(size, batch_size, 0).items()}

    def step(i: int) -> float:
        batch = dict(fixed) if fixed is not None else {k: v.to(device) for k, v in _batch(size, batch_size, i).items()}
        loss = objective(forward, batch, consume_views=free_views).total
        opt.zero_grad()
        loss.backward()
        opt.step()
        return float(loss)

    if losses_only:   # one fresh batch per step, the same batches for every precision
        t, c = time.perf_counter(), time.process_time()
        losses = [step(i) for i in range(steps)]
        return {"losses": losses, "seconds": round(time.perf_counter() - t, 2),
                "cpu_seconds": round((time.process_time() - c) / torch.get_num_threads(), 2)}
    walls, cpus = [], []
    for i in range(steps + 1):
        sync()
        t, c = time.perf_counter(), time.process_time()
        step(i)
        sync()
        if i:   # the first step warms up allocators and kernels
            walls.append(time.perf_counter() - t)
            cpus.append(time.process_time() - c)
    threads = torch.get_num_threads()
    sec = statistics.median(walls)
    out = {"seconds_per_step": round(sec, 3), "cpu_seconds_per_step": round(statistics.median(cpus) / threads, 3),
           "images_per_second": round(5 * batch_size / sec, 3), "peak_rss_gb": round(peak_rss_bytes() / 2**30, 2)}
    if flops:   # counted on a plain step's worth of work (recomputation is not useful work)
        set_activation_checkpointing(model, "none")
        with FlopCounterMode(display=False) as counter:
            step(0)
        out["step_gflop"] = round(counter.get_total_flops() / 1e9, 2)
    if device.startswith("cuda"):
        out["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


def bf16_native() -> bool:
    import torch
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def conv_report(width: str, images: int, size: int, bf16_images: int, bf16_size: int) -> dict:
    """fp32 at the step's own shapes; bf16 (and fp32 again, for a like-for-like ratio) at a smaller one."""
    import torch

    from _conv_limit import conv_limit
    from ldisc.model import LDNet
    fp32 = conv_limit(LDNet(width, 32, 16), images, size, reps=1)
    small = [conv_limit(LDNet(width, 32, 16), bf16_images, bf16_size, dtype, reps=1)
             for dtype in (torch.float32, torch.bfloat16)]
    return {"fp32": fp32, "fp32_small": small[0], "bf16_small": small[1],
            "bf16_over_fp32_throughput": round(small[1]["gflops_per_cpu_second"] / small[0]["gflops_per_cpu_second"], 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", default="tiny")
    ap.add_argument("--steps", type=int, default=2, help="timed steps per lever (after one warm-up step)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="smoke run: small sizes, same rows")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true", help="accelerator report: fp32 vs bf16 autocast on --device")
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="the device's bf16 peak, for the achieved share")
    ap.add_argument("--size", type=int, help="view size (default 448; --quick 64)")
    ap.add_argument("--batch", type=int, help="image pairs per step (default 4; --quick 2)")
    ap.add_argument("--levers", default=",".join(LEVERS), help="comma list of lever rows to run")
    ap.add_argument("--repeat", type=int, default=1, help="run the levers N times, interleaved (medians)")
    ap.add_argument("--parts", default="levers,largest,bf16,conv",
                    help="comma list: levers (needed by largest and the conv fraction), largest, bf16, conv")
    ap.add_argument("--malloc", default="launcher,glibc_kept,default",
                    help="allocator settings per lever: launcher (tcmalloc where installed), glibc_kept, default")
    ap.add_argument("--one", help=argparse.SUPPRESS)      # JSON kwargs of measure(), in a fresh process
    ap.add_argument("--conv", nargs=4, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(**json.loads(args.one))))
        return
    if args.conv:
        print(json.dumps(conv_report(args.width, *args.conv)))
        return
    size, bs = (64, 2) if args.quick else (448, 4)
    size, bs = args.size or size, args.batch or bs
    if args.bf16 or args.device != "cpu":
        print(json.dumps(accelerator_report(args, size, bs)))
        return
    print(json.dumps(cpu_report(args, size, bs)))


def _run(args, env: dict | None = None, **kwargs) -> dict:
    kwargs.setdefault("width", args.width)
    kwargs.setdefault("steps", args.steps)
    kwargs.setdefault("stage", 2)
    out = run_isolated(__file__, "--one", json.dumps(kwargs), threads=args.threads, timeout=3600,
                       env={**BENCH_ENV, **(env or {})})
    print(json.dumps({"run": kwargs, "malloc": env or "default", **out}), file=sys.stderr, flush=True)  # progress
    return out


def accelerator_report(args, size: int, bs: int) -> dict:
    """The headline step on ``--device`` in fp32 and bf16 autocast, at batch ``bs`` and the largest
    batch found by doubling in one process until the device runs out of memory (accelerators only)."""
    rows = {p: _run(args, size=size, batch_size=bs, device=args.device, bf16=p == "bf16", flops=True)
            for p in ("fp32", "bf16")}
    for row in rows.values():
        row["achieved_tflops"] = round(row.pop("step_gflop") / row["seconds_per_step"] / 1e3, 3)
        if args.peak_tflops:
            row["share_of_bf16_peak"] = round(row["achieved_tflops"] / args.peak_tflops, 4)
    largest = None
    if args.device.startswith("cuda"):
        for b in (8, 16, 32, 64, 128):
            try:
                largest = {"batch": b, **_run(args, size=size, batch_size=b, device=args.device, bf16=True, steps=1)}
            except RuntimeError:
                break
    return {"bench": "step", "device": args.device, "stage": 2, "size": size, "batch": bs, "width": args.width,
            **rows, "bf16_speedup": round(rows["fp32"]["seconds_per_step"] / rows["bf16"]["seconds_per_step"], 3),
            "largest_batch_bf16": largest or "searched on accelerators only"}


def _largest_batch(small: dict, large: dict, b_small: int, b_large: int) -> dict:
    slope = (large["peak_rss_gb"] - small["peak_rss_gb"]) / (b_large - b_small)
    base = small["peak_rss_gb"] - slope * b_small
    return {"gb_per_batch": round(slope, 3), "gb_at_batch_0": round(base, 2),
            "largest_batch_in_24gb": int((GIB24 - base) // slope) if slope > 0 else None}


def lever_rows(args, size: int, bs: int, native: bool) -> list[dict]:
    """One row per lever and allocator setting. With ``--repeat N`` the levers run N times,
    interleaved (none, a, b, none, a, b, …): a row holds the medians, the largest peak, every run, and
    the time ratios as the median of each repeat's ratio to that repeat's first lever — on a machine
    whose speed drifts, pairs measured minutes apart compare better than runs measured far apart."""
    chosen = args.levers.split(",")     # the first lever is the reference of the time ratios
    unknown = set(chosen) - set(LEVERS)
    if unknown:
        raise SystemExit(f"unknown --levers {sorted(unknown)}; choose from {list(LEVERS)}")
    settings = malloc_settings(args.malloc.split(","))
    levers = [k for k in chosen if k != "bf16_autocast" or native]
    runs = {lever: {name: [] for name in settings} for lever in levers}
    for _ in range(args.repeat):
        for lever in levers:
            kw = dict(LEVERS[lever], size=size, batch_size=bs, flops=lever == chosen[0] and "conv" in args.parts)
            for name, env in settings.items():
                runs[lever][name].append(_run(args, env, **kw))
    rows = [{"lever": lever, "command": COMMANDS[lever],
             **{name: _summary(runs[lever][name], runs[levers[0]][name]) for name in settings}} for lever in levers]
    if not native and "bf16_autocast" in chosen:
        rows.append({"lever": "bf16_autocast", "command": COMMANDS["bf16_autocast"],
                     "not_run_at_this_size": "this CPU has no native bf16 (oneDNN bf16 unsupported); "
                                             "see bf16_vs_fp32 and conv_limit for the measured slowdown"})
    return rows


def _summary(runs: list[dict], reference: list[dict]) -> dict:
    med = lambda key, rs=runs: statistics.median(r[key] for r in rs)     # noqa: E731
    out = {**runs[0], "seconds_per_step": round(med("seconds_per_step"), 3),
           "cpu_seconds_per_step": round(med("cpu_seconds_per_step"), 3),
           "images_per_second": round(med("images_per_second"), 3),
           "peak_rss_gb": max(r["peak_rss_gb"] for r in runs)}
    for key, ratio in (("seconds_per_step", "time_ratio_vs_first_row"),
                       ("cpu_seconds_per_step", "cpu_time_ratio_vs_first_row")):
        out[ratio] = round(statistics.median(r[key] / f[key] for r, f in zip(runs, reference)), 3)
    if len(runs) > 1:
        out["runs"] = [{k: r[k] for k in ("seconds_per_step", "cpu_seconds_per_step", "peak_rss_gb")} for r in runs]
    return out


def target_check(rows: list[dict]) -> dict:
    target = {**TARGET, "rows": {
        r["lever"]: {"peak_rss_gb": r["launcher"]["peak_rss_gb"],
                     "time_ratio": r["launcher"]["time_ratio_vs_first_row"],
                     "cpu_time_ratio": r["launcher"]["cpu_time_ratio_vs_first_row"],
                     "meets_memory": r["launcher"]["peak_rss_gb"] <= TARGET["peak_rss_gb"],
                     "meets_time_cpu": r["launcher"]["cpu_time_ratio_vs_first_row"] <= TARGET["time_ratio"],
                     # process CPU time / threads ≈ the wall time of an idle machine: against today's 7.66 s
                     "cpu_seconds_vs_todays_fastest": round(r["launcher"]["cpu_seconds_per_step"]
                                                            / TARGET["todays_fastest_seconds"], 3)}
        for r in rows if "launcher" in r}}    # the target is with the launcher's malloc setting
    target["met_by"] = [k for k, v in target["rows"].items() if v["meets_memory"] and v["meets_time_cpu"]]
    return target


def largest_batches(args, size: int, bs: int, by: dict) -> dict:
    b_small = 1
    out = {"method": f"linear in batch from peak RSS measured at batch {b_small} and {bs}, {size} px"}
    settings = malloc_settings(args.malloc.split(","))
    for lever in (k for k in ("none", "checkpoint_all", "checkpoint_selective") if k in by):
        for key, env in settings.items():
            small = _run(args, env, size=size, batch_size=b_small, steps=1, **LEVERS[lever])
            out[f"{lever}/{key}"] = {f"peak_rss_gb_at_batch_{b_small}": small["peak_rss_gb"],
                                     f"peak_rss_gb_at_batch_{bs}": by[lever][key]["peak_rss_gb"],
                                     **_largest_batch(small, by[lever][key], b_small, bs)}
    return out


def bf16_comparison(args, native: bool) -> dict:
    size, bs, steps = (32, 1, 3) if args.quick else (32, 1, 50)
    runs = {name: _run(args, size=size, batch_size=bs, steps=steps, bf16=name == "bf16", losses_only=True)
            for name in ("fp32", "bf16")}
    diff = [abs(a - b) for a, b in zip(runs["fp32"]["losses"], runs["bf16"]["losses"])]
    rel = [d / abs(a) for d, a in zip(diff, runs["fp32"]["losses"])]
    slowdown = round(runs["bf16"]["cpu_seconds"] / runs["fp32"]["cpu_seconds"], 2)
    out = {"setting": {"size": size, "batch": bs, "steps": steps, "stage": 2, "width": args.width,
                       "same_batches_and_init": True,
                       "losses": "fp32 (autocast covers the network forward only, as engine.precision=bf16-autocast)"},
           "max_abs_loss_diff": round(max(diff), 5), "mean_abs_loss_diff": round(statistics.mean(diff), 5),
           "max_rel_loss_diff": round(max(rel), 5),
           "first_loss": {k: round(v["losses"][0], 5) for k, v in runs.items()},
           "last_loss": {k: round(v["losses"][-1], 5) for k, v in runs.items()},
           "cpu_seconds": {k: v["cpu_seconds"] for k, v in runs.items()},
           "seconds": {k: v["seconds"] for k, v in runs.items()},
           "bf16_cpu_time_over_fp32": slowdown, "native_bf16": native}
    out["cpu_default"] = bool(native and slowdown < 1 and max(rel) < 0.02)
    out["verdict"] = ("bf16 autocast can be the CPU default on this machine" if out["cpu_default"] else
                      f"no: bf16 takes {slowdown}x the fp32 CPU time here (native bf16: {native}); fp32 stays the "
                      "CPU default" + ("" if max(rel) < 0.02 else f"; losses differ by up to {max(rel):.1%}"))
    return out


def cpu_report(args, size: int, bs: int) -> dict:
    """Three parts run side by side (the machine is shared anyway; each part's ratios are its own):
    the lever rows then the batch extrapolation, one process at a time; the bf16-vs-fp32 comparison;
    the convolution microbenchmark."""
    from concurrent.futures import ThreadPoolExecutor

    load = [os.getloadavg()[0]]
    native, parts = bf16_native(), set(args.parts.split(","))
    out = {}
    with ThreadPoolExecutor(3) as pool:
        conv_job = pool.submit(run_isolated, __file__, "--conv", str(5 * bs), str(size), "1", str(max(32, size // 4)),
                               "--width", args.width, threads=args.threads, timeout=3600,
                               env=BENCH_ENV) if "conv" in parts else None
        bf16_job = pool.submit(bf16_comparison, args, native) if "bf16" in parts else None
        if "levers" in parts:
            rows = lever_rows(args, size, bs, native)
            by = {r["lever"]: r for r in rows}
            out.update(levers=rows, target={"applies": (size, bs) == (448, 4), **target_check(rows)})
            if "largest" in parts:
                out["largest_batch_24gb"] = largest_batches(args, size, bs, by)
        if bf16_job:
            out["bf16_vs_fp32"] = bf16_job.result()
        if conv_job:
            conv = out["conv_limit"] = conv_job.result()
            if "levers" in parts:
                ref = rows[0]
                step_gflop = next(ref[k] for k in MALLOC_KEYS if k in ref)["step_gflop"]
                conv["step_row"] = ref["lever"]
                for key in (k for k in MALLOC_KEYS if k in ref):
                    r = ref[key]
                    conv[f"achieved_fraction_fp32_{key}"] = {
                        "wall": round(step_gflop / r["seconds_per_step"] / conv["fp32"]["gflops_per_second"], 3),
                        "cpu": round(step_gflop / r["cpu_seconds_per_step"] / conv["fp32"]["gflops_per_cpu_second"], 3)}
                conv.update(step_gflop=step_gflop, target_fraction_fp32=0.8)
    load.append(os.getloadavg()[0])
    return {"bench": "step", "quick": args.quick, "stage": 2, "size": size, "batch": bs, "images_per_step": 5 * bs,
            "width": args.width, "threads": args.threads, "steps_timed": args.steps,
            "load_average_start_end": [round(x, 1) for x in load],
            "note": "shared, loaded machine: wall times are noisy; cpu_seconds (process CPU time / threads) and "
                    "ratios within this run are the figures to compare",
            "malloc_settings": malloc_settings(args.malloc.split(",")), **out}


if __name__ == "__main__":
    main()
