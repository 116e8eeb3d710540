"""Measured effect of ldisc's pretraining options against the authors' defaults (docs/fidelity.md).

For each seed and variant: a short LD pretraining (stage 1 then stage 2, generated fundus images),
then the frozen downstream protocol on synthetic twins with the encoder of its last checkpoint and
with a random-init encoder (same seed). The margin of a variant is mean over seeds and tasks of
(test Dice of its encoder − test Dice of random init); ``delta_vs_authors`` is its margin minus the
authors' defaults' margin. Prints one JSON object.

Usage: python bench/fidelity.py [--seeds 0,1,2] [--jobs 3] [--stage1 20] [--stage2 20] [--epochs 10]
       [--variants authors,dihedral,mixup_in_region,ldisc_decoder] [--out DIR]
(--jobs N runs the seeds in N processes; a seed's variants share its generated image pool.)
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS = {                                   # overrides on top of the (authors') defaults
    "authors": [],
    "dihedral": ["views.second_view=dihedral"],
    "mixup_in_region": ["objective.region_views=all"],
    "ldisc_decoder": ["model.decoder=ldisc"],
    "entropy_nats": ["objective.entropy_base=2.718281828459045"],
    "torch_init": ["model.init=torch"],
    "ld_crisp": ["objective=ld_crisp"],                 # the crisp-cluster preset (docs/clusters.md)
}
TASKS = ("synth_rite_vessel@16", "synth_idrid_disc@16")


def pretrain_variant(run_dir: Path, variant: str, seed: int, args) -> tuple[str, float]:
    from ldisc.train import pretrain

    t0 = time.perf_counter()
    result = pretrain(["data.modality=fundus", "data.image_side=80", f"data.view_side={args.size}", "data.pool=64",
                       f"train.stage1_steps={args.stage1}", f"train.stage2_steps={args.stage2}",
                       f"train.batch_size={args.batch}", f"train.checkpoint_every={args.stage1 + args.stage2}",
                       "train.val_fraction=0", "train.progress=false", f"seed={seed}", f"run_dir={run_dir}",
                       f"threads={args.threads}", *VARIANTS[variant]])
    return str(result.checkpoint), time.perf_counter() - t0


def run_seed(seed: int, out: Path, variants: list[str], tasks: list[str], args) -> dict[str, list[float]]:
    """Pretrain every variant with ``seed``, evaluate them and random init (frozen protocol) → seconds."""
    from ldisc.eval import evaluate

    ckpts, seconds = [], {}
    for v in variants:
        ckpt, s = pretrain_variant(out / f"{v}-s{seed}", v, seed, args)
        ckpts.append(ckpt)
        seconds[v] = [round(s, 1)]
    evaluate(checkpoints=["random", *ckpts], tasks=tasks, protocols=["frozen"], seeds=[seed],
             out_dir=str(out / "eval"), serial=True,
             overrides=["protocol=demo", f"protocol.epochs_frozen={args.epochs}", "protocol.device=cpu",
                        "data.max_test=16", "fleet.progress=false", "report.enabled=false"])
    return seconds


def summarise(outs: list[Path], seeds: list[int], variants: list[str], tasks: list[str], args,
              seconds: dict[str, list[float]]) -> dict:
    from ldisc.eval import ResultsStore

    rows = [r for o in outs for r in ResultsStore(o / "eval").rows("ok")]

    def dice(variant: str | None, task: str, seed: int) -> float:
        hit = [r["dice_mean"] for r in rows if r["task"] == task and r["seed"] == seed
               and ((r["checkpoint"] == "random") if variant is None
                    else r["checkpoint"].startswith(f"{variant}-s{seed}/"))]
        if not hit:
            raise RuntimeError(f"no result for {variant or 'random'} / {task} / seed {seed}")
        return float(np.mean(hit))

    result = {"seeds": seeds, "tasks": tasks, "stage1_steps": args.stage1, "stage2_steps": args.stage2,
              "batch": args.batch, "size": args.size, "epochs_frozen": args.epochs, "variants": {}}
    for v in variants:
        margin = {(t, s): dice(v, t, s) - dice(None, t, s) for s in seeds for t in tasks}
        result["variants"][v] = {
            "overrides": VARIANTS[v], "margin_mean": round(float(np.mean(list(margin.values()))), 4),
            "margin_per_seed": [round(float(np.mean([margin[(t, s)] for t in tasks])), 4) for s in seeds],
            "margin_per_task": {t: round(float(np.mean([margin[(t, s)] for s in seeds])), 4) for t in tasks},
            "pretrain_seconds": seconds.get(v, [])}
    base = result["variants"].get("authors")
    for r in result["variants"].values():
        if base is not None:
            diffs = np.array(r["margin_per_seed"]) - np.array(base["margin_per_seed"])
            r["delta_vs_authors"] = round(float(diffs.mean()), 4)
            r["delta_vs_authors_std"] = round(float(diffs.std(ddof=1)) if len(diffs) > 1 else 0.0, 4)
    result["random_dice_mean"] = round(float(np.mean([dice(None, t, s) for s in seeds for t in tasks])), 4)
    return result


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--stage1", type=int, default=20)
    p.add_argument("--stage2", type=int, default=20)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--jobs", type=int, default=1, help="seeds run in this many parallel processes")
    p.add_argument("--variants", default="authors,dihedral,mixup_in_region,ldisc_decoder")
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--out", default=None)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    variants, tasks = args.variants.split(","), args.tasks.split(",")
    out = Path(args.out or tempfile.mkdtemp(prefix="ldisc-fidelity-"))
    t0 = time.perf_counter()
    if args.child:                                   # one seed, in a process of its own
        print(json.dumps(run_seed(seeds[0], out, variants, tasks, args)))
        return
    outs, seconds = [out / f"s{s}" for s in seeds], {}
    if args.jobs > 1:
        procs = [subprocess.Popen([sys.executable, __file__, *_pass_through(args), "--child", f"--seeds={s}",
                                   f"--out={o}"], stdout=subprocess.PIPE, text=True) for s, o in zip(seeds, outs)]
        for proc in procs:
            text, _ = proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"seed run failed ({proc.returncode})")
            for v, secs in json.loads(text.strip().splitlines()[-1]).items():
                seconds.setdefault(v, []).extend(secs)
    else:
        for s, o in zip(seeds, outs):
            for v, secs in run_seed(s, o, variants, tasks, args).items():
                seconds.setdefault(v, []).extend(secs)
    result = summarise(outs, seeds, variants, tasks, args, seconds)
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result))


def _pass_through(args) -> list[str]:
    keys = ("stage1", "stage2", "batch", "size", "epochs", "threads", "variants", "tasks")
    return [f"--{k}={getattr(args, k)}" for k in keys]


if __name__ == "__main__":
    main()
