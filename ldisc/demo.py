"""``make demo``: the whole job end to end on embedded synthetic data, through the real CLIs.

1. ``ldisc-synth``    — procedural fundus photographs (the "hospital folder");
2. ``ldisc-shard``    — ingest them into WebDataset shards + a versioned manifest, then verify;
3. ``ldisc-pretrain`` — LD stage 1 then stage 2 under DeepSpeed on the CPU, streaming the shards;
4. ``ldisc-eval``     — the Ray fleet: pretrained encoder vs. random init on synthetic segmentation
                        twins (frozen protocol), then the report.

Usage: ``python -m ldisc.demo [--out runs/demo] [--quick]``. Every step prints what it ran; the end
prints where the checkpoint, loss curve and report are, and the losses falling.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path


def _run(title: str, args: list[str], env: dict | None = None) -> None:
    print(f"\n=== {title}\n$ {' '.join(args)}", flush=True)
    started = time.perf_counter()
    from launcher.local import CPU_MALLOC_ENV

    proc = subprocess.run([sys.executable, "-m", *args], env={**CPU_MALLOC_ENV, **os.environ, **(env or {})})
    if proc.returncode != 0:
        raise SystemExit(f"demo step '{title}' failed with exit code {proc.returncode}")
    print(f"--- {title}: {time.perf_counter() - started:.1f} s", flush=True)


def _loss_summary(log: Path) -> str:
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    lines = []
    for stage in (1, 2):
        r = [x for x in rows if x.get("stage") == stage]
        if r:
            head, tail = r[: max(1, len(r) // 10)], r[-max(1, len(r) // 10):]
            mean = lambda xs, k: sum(x[k] for x in xs) / len(xs)  # noqa: E731
            lines.append(f"stage {stage}: L_pd {mean(head, 'patch'):.3f} -> {mean(tail, 'patch'):.3f}, "
                         f"total {mean(head, 'total'):.3f} -> {mean(tail, 'total'):.3f} over {len(r)} steps")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/demo", help="folder for everything the demo writes (replaced)")
    ap.add_argument("--quick", action="store_true", help="fewer images and steps (a smoke run)")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    n_images, s1, s2 = (16, 10, 4) if args.quick else (64, 150, 50)
    # demo-only secret for the pseudonymous patient key; real ingests read theirs from a secret store
    secret_env = {"LDISC_PATIENT_KEY_SECRET": secrets.token_hex(16)}

    _run("1/4 synthesise a hospital folder of fundus photographs",
         ["ldisc.synth.cli", "--modality", "fundus", "--n", str(n_images), "--size", "256", "--seed", "0",
          "--out", str(out / "hospital"), "--workers", "2"])
    _run("2/4 ingest into shards, then verify",
         ["sharding.cli", "ingest", str(out / "hospital" / "images"), "--dataset", str(out / "dataset"),
          "--site", "demo-site", "--modality", "fundus", "--size", "256", "--workers", "2",
          "--metrics-file", str(out / "ingest-metrics.prom"),
          "--quarantine-report", str(out / "quarantine.jsonl")], secret_env)
    _run("2/4 verify", ["sharding.cli", "verify", str(out / "dataset")])
    run_dir = out / "pretrain"
    _run("3/4 LD pretraining, stage 1 then stage 2 (DeepSpeed, CPU)",
         ["ldisc.train.cli", f"run_dir={run_dir}", "data=shards", f"data.dataset={out / 'dataset'}",
          "data.view_side=96", "data.num_workers=1", "train.batch_size=2", f"train.stage1_steps={s1}",
          f"train.stage2_steps={s2}", f"train.checkpoint_every={s1}", "threads=2"])
    from ldisc.train.checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise SystemExit(f"no complete checkpoint under {run_dir}")
    eval_dir = out / "eval"
    tasks = "[synth_rite_vessel@16,synth_idrid_disc@16]"
    _run("4/4 evaluation fleet on Ray: pretrained vs random init",
         ["ldisc.eval.cli", f"checkpoints=[{ckpt / 'encoder.pt'},random]", f"tasks={tasks}",
          "protocol=demo", "protocols=[frozen]", "seeds=[0]" if args.quick else "seeds=[0,1]", f"out_dir={eval_dir}",
          "ray.num_cpus=2"])
    print("\n=== demo done")
    print(_loss_summary(run_dir / "losses.jsonl"))
    print(f"checkpoint:  {ckpt}\nencoder:     {ckpt / 'encoder.pt'}\nloss curve:  {run_dir / 'loss_curve.png'}")
    for report in sorted((eval_dir / "report").glob("report.*")) if (eval_dir / "report").is_dir() else []:
        print(f"report:      {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
