"""Cluster crispness, clusters in use and anatomy alignment after a fixed short stage 2.

One shared stage 1 per modality, then one stage-2 run per (modality, setting) started from it, each
its own ``python -m ldisc.train.cli`` process (``--jobs`` at a time). Reads the last record of each
run's ``clusters.jsonl`` (the held-out synthetic probe) and prints ONE JSON object:

    {"config": {...}, "results": {"fundus": {"authors": {"crispness", "effective_count", "dice",
     "mean_dice", "step", "seconds"}, "crisp": {...}}, "xray": {...}}}

    python bench/clusters.py                                   # authors vs. the ld_crisp preset
    python bench/clusters.py --settings authors,entropy1,area,power3,k8,momentum,bank,crisp \\
        --modalities fundus --stage2-steps 60 --jobs 4 --table  # the ablation rows of docs/clusters.md
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BITS = 1.0                           # the entropy is in bits by default (objective.entropy_base=2): weights as the authors give them
AUTHORS: list[str] = []              # the defaults are the authors' (4B views, 0.1 x entropy in bits)
SETTINGS: dict[str, list[str]] = {
    "authors": AUTHORS,                                                    # K 16, tau 0.2, w_rd 10, 0.1 bits, 4B
    "code_default": [],                                                    # 5 views, 0.1 nats
    "entropy1": AUTHORS + [f"objective.w_entropy={1.0 * BITS:.4f}"],        # 1 bit
    "area": AUTHORS + [f"objective.w_entropy={1.0 * BITS:.4f}", "objective.w_area=1"],
    "area10": AUTHORS + [f"objective.w_entropy={10.0 * BITS:.4f}", "objective.w_area=1"],
    "power3": AUTHORS + ["objective.mask_power=3"],
    "power8": AUTHORS + ["objective.mask_power=8"],
    "p2area": AUTHORS + [f"objective.w_entropy={1.0 * BITS:.4f}", "objective.w_area=1", "objective.mask_power=2"],
    "p8area": AUTHORS + [f"objective.w_entropy={1.0 * BITS:.4f}", "objective.w_area=1", "objective.mask_power=8"],
    "k8": AUTHORS + ["model.clusters=8"],
    "momentum": AUTHORS + ["objective.prototype_momentum=0.9"],
    "bank": AUTHORS + ["bank=fifo", "bank.entries=4096"],
    "crisp": ["objective=ld_crisp"],                                       # the named preset
}


def _env() -> dict:
    env = dict(os.environ)
    env.setdefault("DS_ACCELERATOR", "cpu")
    env.setdefault("DS_BUILD_OPS", "0")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _common(args, modality: str) -> list[str]:
    return [f"data.modality={modality}", f"data.view_side={args.size}", f"data.image_side={args.size + args.size // 4}",
            f"data.pool={args.pool}", f"train.batch_size={args.batch}", "train.progress=false",
            f"threads={args.threads}", "train.checkpoint_every=100000", f"seed={args.seed}"]


def _launch(overrides: list[str], run_dir: Path) -> tuple[subprocess.Popen, Path, float]:
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "ldisc.train.cli", *overrides, f"run_dir={run_dir}"]
    log = open(run_dir / "bench.log", "w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_env()), run_dir, time.time()


def _wait_all(limit: int, queue: list) -> dict[Path, float]:
    """Run ``queue`` (list of (overrides, run_dir)) ``limit`` at a time; {run_dir: seconds}."""
    done, running = {}, []
    queue = list(queue)
    while queue or running:
        while queue and len(running) < limit:
            running.append(_launch(*queue.pop(0)))
        for job in list(running):
            proc, run_dir, t0 = job
            if proc.poll() is not None:
                running.remove(job)
                if proc.returncode != 0:
                    print(f"{run_dir}: exit {proc.returncode}, see {run_dir / 'bench.log'}", file=sys.stderr)
                done[run_dir] = round(time.time() - t0, 1)
        time.sleep(1)
    return done


def _stage1(args, out: Path) -> dict[str, Path]:
    queue = [(_common(args, m) + ["objective.stage=1", f"train.stage1_steps={args.stage1_steps}"], out / f"stage1_{m}")
             for m in args.modalities if not args.init_from]
    _wait_all(args.jobs, queue)
    if args.init_from:
        return dict(zip(args.modalities, [Path(p) for p in args.init_from]))
    from ldisc.train.checkpoint import checkpoint_root, step_dir_name

    return {m: checkpoint_root(out / f"stage1_{m}") / step_dir_name(args.stage1_steps) for m in args.modalities}


def _result(run_dir: Path, seconds: float | None) -> dict:
    path = run_dir / "clusters.jsonl"
    if not path.is_file():
        return {"error": f"no {path}"}
    records = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    out = {}
    for rec in records:
        dice = {k: round(v, 3) for k, v in rec["dice"].items()}
        out[rec["step"]] = {"crispness": round(rec["crispness"], 4), "effective_count": round(rec["effective_count"], 2),
                            "dice": dice, "mean_dice": round(sum(dice.values()) / max(len(dice), 1), 3)}
    last = max(out)
    return {**out[last], "step": last, "seconds": seconds, "by_step": {str(k): v for k, v in out.items()}}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--settings", default="authors,crisp")
    p.add_argument("--modalities", default="fundus,xray")
    p.add_argument("--stage1-steps", type=int, default=150)
    p.add_argument("--stage2-steps", type=int, default=60)
    p.add_argument("--probe-every", type=int, default=0, help="extra probes during stage 2 (0: end only)")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--pool", type=int, default=48)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--init-from", nargs="*", default=None, help="stage-1 checkpoints, one per modality")
    p.add_argument("--out", default="runs/bench-clusters")
    p.add_argument("--table", action="store_true", help="also print markdown rows to stderr")
    args = p.parse_args(argv)
    args.modalities = args.modalities.split(",")
    settings = args.settings.split(",")
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        p.exit(2, f"unknown settings {unknown}; known: {sorted(SETTINGS)}\n")
    out = Path(args.out)
    inits = _stage1(args, out)
    queue = [(_common(args, m) + SETTINGS[s] + ["objective.stage=2", f"train.init_from={inits[m]}",
                                                f"train.stage2_steps={args.stage2_steps}",
                                                f"train.cluster_image_every={args.probe_every}"], out / f"{m}_{s}")
             for m in args.modalities for s in settings]
    seconds = _wait_all(args.jobs, queue)
    results = {m: {s: _result(out / f"{m}_{s}", seconds.get(out / f"{m}_{s}")) for s in settings}
               for m in args.modalities}
    report = {"config": {k: v for k, v in vars(args).items() if k != "table"} | {"settings": {s: SETTINGS[s] for s in settings}},
              "results": results}
    print(json.dumps(report))
    if args.table:
        for m, rows in results.items():
            for s, r in rows.items():
                if "error" not in r:
                    dice = ", ".join(f"{k} {v:.2f}" for k, v in r["dice"].items())
                    print(f"| {m} | {s} | {r['step']} | {r['crispness']:.3f} | {r['effective_count']:.1f} | "
                          f"{r['mean_dice']:.3f} | {dice} |", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
