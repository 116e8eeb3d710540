"""One LD training step (forward, backward, Adam), stage 2 by default: seconds/step, images/s, peak RSS.

The headline figure is the issue's: stage 2 at 448×448, batch 4 (5×4 images per step), 2 threads.
Same-run baseline: the authors' formulation of the losses (N×N NCE matrices, region features as a
(5B, K, D, H, W) broadcast product) on the same model at 224 px — at 448 px it does not fit in
24 GiB — against ours at 224 px. Each configuration runs in its own process (honest peak RSS).
Usage: python bench/step.py [--width tiny] [--steps 3]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import MALLOC_KEEP, peak_rss_bytes, run_isolated  # noqa: E402

# The authors' code on this CPU class (shared/NOTES-cpu-stack.md), full-width VGG16, 2 threads.
AUTHORS_REFERENCE = {"stage1_448_b4_seconds": 14.2, "stage2_448_b4": "does not fit in 24 GiB",
                     "stage2_224_b4_seconds": 7.6, "stage2_224_b4_peak_gb": 8.7}


def naive_losses(model, batch, stage: int):
    """The authors' memory-heavy formulation, for the baseline only."""
    import torch
    import torch.nn.functional as F

    from ldisc.objectives.nce import authors_nce
    from ldisc.objectives.patches import grid_vectors, patch_grid, undo_dihedral_grid
    from ldisc.objectives.region import entropy_loss, region_loss
    from ldisc.views import VIEW_KEYS

    b = batch["x1_1"].shape[0]
    out = model(torch.cat([batch[k] for k in VIEW_KEYS]))
    g11, g12, g21, g22, gm = patch_grid(out.embedding).split(b)
    g12 = undo_dihedral_grid(g12, batch["flip1"], batch["rot1"])
    g22 = undo_dihedral_grid(g22, batch["flip2"], batch["rot2"])
    loss = authors_nce(torch.cat([grid_vectors(g) for g in (g11, g21, g12, g22)]))
    w = batch["mix_w"].view(-1, 1, 1, 1)
    target = F.normalize(w * g11 + (1 - w) * g21, dim=1).detach()
    loss = loss + authors_nce(torch.cat([grid_vectors(gm), grid_vectors(target)]))
    if stage == 2:
        r = F.normalize((out.embedding[:, None] * out.masks[:, :, None]).mean((3, 4)), dim=2)
        loss = loss + 10 * region_loss(r, F.normalize(r.mean(0), dim=1)) + 0.1 * entropy_loss(out.masks)
    return loss


def measure(size: int, batch_size: int, stage: int, width: str, steps: int, naive: bool,
            device: str = "cpu", bf16: bool = False) -> dict:
    import contextlib

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ldisc.model import LDNet
    from ldisc.objectives.objective import LDObjective, ObjectiveConfig
    from ldisc.views import ViewConfig, make_views_batch

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    batch = make_views_batch(torch.rand(batch_size, 3, size, size), torch.rand(batch_size, 3, size, size),
                             ViewConfig(view_side=size), gen)
    batch = {k: v.to(device) for k, v in batch.items()}
    model = LDNet(width, 32, 16 if stage == 2 else 0).to(device)
    objective = LDObjective(ObjectiveConfig(stage=stage))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    autocast = (lambda: torch.autocast(torch.device(device).type, torch.bfloat16)) if bf16 else contextlib.nullcontext

    def step():
        with autocast():
            loss = naive_losses(model, batch, stage) if naive else objective(model, batch).total
        opt.zero_grad()
        loss.backward()
        opt.step()

    times = []
    for i in range(steps + 1):
        sync()
        t = time.perf_counter()
        step()
        sync()
        if i:   # first step warms up allocators and kernels
            times.append(time.perf_counter() - t)
    with FlopCounterMode(display=False) as counter:
        step()
    sec = statistics.median(times)
    out = {"seconds_per_step": round(sec, 4), "images_per_second": round(5 * batch_size / sec, 2),
           "achieved_tflops": round(counter.get_total_flops() / sec / 1e12, 3),
           "peak_rss_gb": round(peak_rss_bytes() / 2**30, 2)}
    if device.startswith("cuda"):
        out["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", default="tiny")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true", help="autocast the step to bfloat16")
    ap.add_argument("--one", nargs=4, metavar=("SIZE", "BATCH", "STAGE", "NAIVE"))
    args = ap.parse_args()
    if args.one:
        size, bs, stage, naive = map(int, args.one)
        print(json.dumps(measure(size, bs, stage, args.width, args.steps, bool(naive), args.device, args.bf16)))
        return
    if args.device != "cpu":   # accelerator: the headline step only, fp32 and bf16
        fp32 = measure(448, 4, 2, args.width, args.steps, False, args.device, False)
        bf16 = measure(448, 4, 2, args.width, args.steps, False, args.device, True)
        print(json.dumps({"bench": "step", "device": args.device, "stage": 2, "size": 448, "batch": 4,
                          "width": args.width, "fp32": fp32, "bf16": bf16,
                          "bf16_speedup": round(fp32["seconds_per_step"] / bf16["seconds_per_step"], 3)}))
        return
    run = lambda *a, env=None: run_isolated(__file__, "--one", *map(str, a), "--width", args.width,  # noqa: E731
                                            "--steps", str(args.steps), threads=args.threads, env=env)
    headline = run(448, 4, 2, 0)
    kept = run(448, 4, 2, 0, env=MALLOC_KEEP)
    ours_224, naive_224 = run(224, 4, 2, 0), run(224, 4, 2, 1)
    print(json.dumps({
        "bench": "step", "stage": 2, "size": 448, "batch": 4, "images_per_step": 20, "threads": args.threads,
        "width": args.width, **headline,
        "with_malloc_keep": {**kept, "env": MALLOC_KEEP,
                             "speedup": round(headline["seconds_per_step"] / kept["seconds_per_step"], 3)},
        "same_run_baseline_224px": {"ours": ours_224, "authors_formulation": naive_224,
                                    "time_ratio": round(ours_224["seconds_per_step"] / naive_224["seconds_per_step"], 3),
                                    "memory_ratio": round(ours_224["peak_rss_gb"] / naive_224["peak_rss_gb"], 3)},
        "authors_code_reference_from_notes": AUTHORS_REFERENCE}))


if __name__ == "__main__":
    main()
