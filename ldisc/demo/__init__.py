"""``make demo``: the three jobs of ldisc together, through the real entry points, on embedded synthetic data.

1. two hospitals — synthetic fundus photographs from two "devices" (colour cast, image size) — and a
   chest X-ray site (``ldisc-synth --site``), plus ``../shared/realdata`` when that folder exists;
2. ingest hospital A and the X-ray site (``ldisc-launch ingest``), then pretrain with
   ``ldisc-launch pretrain --target local``: 2 processes, the sharded memory bank, a per-site mixture;
3. while it trains, ingest hospital B into the same dataset, twice (the second adds nothing); the job
   takes the new manifest version at its next epoch boundary (log line + ``ldisc_train_manifest_*``);
4. scrape the job's Prometheus endpoint once: step, images/s, data wait;
5. evaluate the final checkpoint, ``best`` and random init on the synthetic twins of the 12 downstream
   tasks and the landmark / shape-guided tasks through the Ray fleet (``ldisc-launch eval``);
6. one report (Dice table, wins/losses, charts, overlays, loss curves, views/embeddings/masks, a landmark
   heat-map, a shape-guided mask example); the end prints where everything is.

Usage: ``python -m ldisc.demo [--size tiny|default] [--out runs/demo]`` (``make demo DEMO_SIZE=tiny``).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from ldisc.demo.live import rate, scrape, wait_for
from ldisc.demo.sizes import SIZES, DemoSize
from ldisc.demo.steps import (HOSPITAL_A, HOSPITAL_B, XRAY_SITE, add_realdata, demo_env, ingest, module_argv,
                              patient_key_env, run_step, site_landmarks, synthesise)


def pretrain_argv(size: DemoSize, run_dir: Path, dataset: Path, port: int) -> list[str]:
    """``ldisc-launch pretrain --target local``: 2 processes, the FIFO bank, one weight per site."""
    weights = f"{{{HOSPITAL_A.name}/fundus:1,{HOSPITAL_B.name}/fundus:1,{XRAY_SITE.name}/xray:1}}"
    return module_argv(
        "launcher.cli", "pretrain", "--target", "local", "launch.procs_per_node=2", f"run_dir={run_dir}",
        "data=shards", f"data.dataset={dataset}", f"data.view_side={size.train_px}", "data.num_workers=0",
        f"data.weights={weights}", f"data.epoch_samples={size.epoch_samples}", "bank=fifo", "bank.entries=4096",
        "train.batch_size=2", f"train.stage1_steps={size.stage1}", f"train.stage2_steps={size.stage2}",
        f"train.checkpoint_every={size.checkpoint_every}", "train.keep_checkpoints=100", "train.val_fraction=0.3",
        f"metrics.port={port}", "metrics.linger_s=5", "threads=1")


def eval_argv(checkpoints: list[str], size: DemoSize, out_dir: Path) -> list[str]:
    """The demo's one evaluation command: every checkpoint × the 12 twins + the application tasks, on Ray."""
    return module_argv(
        "launcher.cli", "eval", "--target", "local", f"checkpoints=[{','.join(checkpoints)}]",
        f"tasks=[synthetic@{size.eval_labels},applications]", f"protocol={size.protocol}", "protocols=[frozen]",
        "seeds=[0]", f"data.max_test={size.eval_max_test}", "ray.num_cpus=2", f"out_dir={out_dir}")


def stream_in(size: DemoSize, out: Path, drops: dict, dataset: Path, run_dir: Path) -> dict:
    """Steps 2–4: launch pretraining, ingest hospital B twice while it runs, scrape, see the new version."""
    from ldisc.train.env import free_port

    port = free_port()
    argv = pretrain_argv(size, run_dir, dataset, port)
    print(f"\n=== 2/6 pretrain: 2 processes, sharded FIFO bank, per-site mixture (runs in the background)\n"
          f"$ {' '.join(argv[2:])}", flush=True)
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=demo_env())
    try:
        first = wait_for(proc, port, lambda f: f.get("steps", 0) >= 1, "its first step")
        print(f"\n--- the job trains: step {first['steps']:.0f}, manifest version {first['manifest_version']:.0f} "
              f"({first['manifest_samples']:.0f} samples)", flush=True)
        prom = out / "ingest-metrics.prom"
        b1 = ingest(HOSPITAL_B, drops[HOSPITAL_B] / "images", dataset, size.image_px,
                    "3/6 stream in: ingest hospital B into the same dataset while the job trains", prom)
        now = scrape(port) or first
        print(f"\n=== 4/6 scrape http://127.0.0.1:{port}/metrics (rank 0): step {now.get('steps', 0):.0f}, "
              f"{rate(first, now, 'images'):.1f} images/s, data wait {1000 * now.get('data_wait', 0):.0f} ms/step "
              f"(step {1000 * now.get('step_seconds', 0):.0f} ms)", flush=True)
        seen = taken_version(proc, port, run_dir, b1["version"])
        print(f"\n--- the running job took manifest version {seen['manifest_version']} at its epoch boundary: "
              f"{first['manifest_samples']:.0f} → {seen['samples']} samples (from step {seen['step'] + 1}; its log "
              f"line, {run_dir / 'data_versions.jsonl'} and ldisc_train_manifest_version say so)", flush=True)
        b2 = ingest(HOSPITAL_B, drops[HOSPITAL_B] / "images", dataset, size.image_px,
                    "3/6 ingest hospital B again (idempotent)", prom)
        print(f"--- hospital B: first ingest added {b1['added']} → version {b1['version']}; "
              f"second added {b2['added']} → version {b2['version']}", flush=True)
        if b2["added"] != 0 or b2["version"] != b1["version"]:
            raise SystemExit("demo: re-ingesting hospital B changed the dataset")
        if proc.wait() != 0:
            raise SystemExit(f"demo: pretraining failed with exit code {proc.returncode}")
    finally:
        if proc.poll() is None:
            proc.terminate()
    print(f"--- 2/6 pretrain: {time.perf_counter() - started:.1f} s", flush=True)
    return {"port": port, "hospital_b": [b1, b2], "scrape": now, "taken": seen}


def taken_version(proc: subprocess.Popen, port: int, run_dir: Path, version: int) -> dict:
    """The job's record of the epoch where it took manifest ``version``: seen on its metrics endpoint while it
    runs, read from its ``data_versions.jsonl`` (the log of the switch) once it is there."""
    def record() -> dict | None:
        path = run_dir / "data_versions.jsonl"
        rows = [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []
        return next((r for r in rows if r["manifest_version"] >= version), None)

    try:
        wait_for(proc, port, lambda f: f.get("manifest_version", 0) >= version or record() is not None,
                 f"it took manifest version {version}")
    except SystemExit:
        if record() is None:
            raise SystemExit(f"demo: the pretraining job ended before an epoch boundary after version {version} "
                             "landed (a faster machine than the demo sizes assume: more steps, see ldisc/demo/sizes.py)")
    for _ in range(40):              # the gauge and the log line are written together; give the file a moment
        if (found := record()) is not None:
            return found
        time.sleep(0.25)
    raise SystemExit(f"demo: the job reports manifest version {version} but did not log the switch")


def applications(size: DemoSize, out: Path, drops: dict, dataset: Path, final: Path, stage1: Path) -> dict:
    """A landmark heat-map (ldisc-localize, template from hospital A, images of hospital B) and a shape-guided
    mask example (a short stage-2 run with the vessel-shape prior, then ldisc-segment)."""
    template, points = site_landmarks(drops[HOSPITAL_A])
    queries = sorted((drops[HOSPITAL_B] / "images").glob("*.png"))[:3]
    loc = out / "apps" / "localize"
    run_step("landmarks: one annotated hospital-A template → hospital-B images (ldisc-localize)",
             module_argv("ldisc.apps.localize_cli", "--checkpoint", str(final), "--template", str(template),
                         "--landmarks", str(points), "--images", *map(str, queries), "--out", str(loc),
                         "--size", str(size.image_px)))
    sg = out / "shape-guided"
    run_step("shape-guided stage 2 from the stage-1 checkpoint (vessel-shape prior of another modality)",
             module_argv("ldisc.train.cli", "objective=shape_guided", f"train.init_from={stage1}", f"run_dir={sg}",
                         "data=shards", f"data.dataset={dataset}", f"data.view_side={size.train_px}", "data.num_workers=0",
                         f"data.weights={{{HOSPITAL_A.name}/fundus:1,{HOSPITAL_B.name}/fundus:1}}",
                         f"data.epoch_samples={size.epoch_samples}", "train.batch_size=2",
                         f"train.stage2_steps={size.shape_steps}", f"train.checkpoint_every={size.shape_steps}",
                         "train.val_fraction=0", "threads=1"))
    from ldisc.train.checkpoint import latest_checkpoint

    seg = out / "apps" / "segment"
    run_step("vessel masks read out of the shape-guided network (ldisc-segment)",
             module_argv("ldisc.apps.segment_cli", "--checkpoint", str(latest_checkpoint(sg)), "--images",
                         *map(str, queries), "--out", str(seg)))
    return {"heatmaps": sorted((loc / "overlays").glob("*.png")), "masks": sorted((seg / "overlays").glob("*.png")),
            "shape_guided": sg}


def write_report(out: Path, run_dir: Path, eval_dir: Path, final: Path, drops: dict, apps: dict) -> Path:
    from ldisc.eval.report_extras import Section, add_sections, views_figure

    report = eval_dir / "report" / "report.html"
    figure = views_figure(final, sorted((drops[HOSPITAL_A] / "images").glob("*.png"))[:2], out / "views.png")
    add_sections(report, [
        Section("Pretraining loss curves", [run_dir / "loss_curve.png", apps["shape_guided"] / "loss_curve.png"],
                "LD stage 1 then stage 2 (2 ranks, FIFO bank); then the short shape-guided stage 2.",
                ["LD pretraining", "shape-guided stage 2"]),
        Section("What LD sees and learns", [figure], "Rows: the four augmented views and the mixup image of one "
                "hospital-A pair. Columns: the input, its per-pixel embedding (3 principal components as RGB), "
                "the hard cluster masks of stage 2.", ["views · embeddings · masks"]),
        Section("Landmark heat-map (one-shot, template from hospital A)", apps["heatmaps"][:2]),
        Section("Shape-guided vessel mask (no fundus labels)", apps["masks"][:2]),
    ])
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/demo", help="folder for everything the demo writes (replaced)")
    ap.add_argument("--size", choices=sorted(SIZES), default=os.environ.get("DEMO_SIZE") or "default")
    ap.add_argument("--quick", action="store_true", help="same as --size tiny")
    args = ap.parse_args(argv)
    size = SIZES["tiny" if args.quick else args.size]
    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    os.environ.update(patient_key_env())
    started = time.perf_counter()
    print(f"ldisc demo, size {size.name}: everything goes to {out}", flush=True)

    print("\n=== 1/6 two hospitals and an X-ray site", flush=True)
    drops = {s: synthesise(s, out / "drop", size.images, size.image_px) for s in (HOSPITAL_A, HOSPITAL_B, XRAY_SITE)}
    real = {s.name: add_realdata(drops[s] / "images", s.modality) for s in (HOSPITAL_A, XRAY_SITE)}
    print(f"--- real images from ../shared/realdata: {real if any(real.values()) else 'none (folder absent)'}")

    dataset, prom = out / "dataset", out / "ingest-metrics.prom"
    for site in (HOSPITAL_A, XRAY_SITE):
        ingest(site, drops[site] / "images", dataset, size.image_px, f"2/6 ingest {site.name}", prom)
    run_step("2/6 verify the dataset", module_argv("sharding.cli", "verify", str(dataset)))
    run_dir = out / "pretrain"
    stream_in(size, out, drops, dataset, run_dir)

    from ldisc.train.checkpoint import best_checkpoint, best_record, latest_checkpoint, step_dir_name

    final, best = latest_checkpoint(run_dir), best_checkpoint(run_dir)
    if best is not None and (best_record(run_dir) or {}).get("stage") != 2:
        # validation stopped in stage 1 (a split left below one batch): that best is a stage-1 model, which
        # the shape-guided tasks cannot read out; the demo evaluates the final stage-2 checkpoint only
        print(f"--- best checkpoint {best.name} is from stage 1: evaluating the final checkpoint only", flush=True)
        best = None
    apps = applications(size, out, drops, dataset, final, run_dir / "checkpoints" / step_dir_name(size.stage1))
    checkpoints = [str(final), *([str(best)] if best and best != final else []), "random"]
    eval_dir = out / "eval"
    run_step("5/6 evaluate final" + (", best" if best and best != final else "") + " and random init on the 12 "
             "synthetic twins + landmark and shape-guided tasks (Ray fleet)", eval_argv(checkpoints, size, eval_dir),
             retry_ray=True)
    print("\n=== 6/6 report", flush=True)
    report = write_report(out, run_dir, eval_dir, final, drops, apps)

    versions = [json.loads(x) for x in (run_dir / "data_versions.jsonl").read_text().splitlines()]
    print(f"\n=== demo done in {time.perf_counter() - started:.0f} s (size {size.name})")
    print("manifest versions the job trained on: " + ", ".join(
        f"v{r['manifest_version']} ({r['samples']} samples) from step {r['step'] + 1}" for r in versions))
    where = {"dataset": dataset, "pretraining run": run_dir, "final checkpoint": final,
             "best checkpoint": best or "none (no validation)", "loss curve": run_dir / "loss_curve.png",
             "metrics (textfiles)": run_dir / "metrics.rank0.prom", "ingest metrics": prom,
             "shape-guided run": apps["shape_guided"], "landmark heat-maps": out / "apps" / "localize" / "overlays",
             "vessel masks": out / "apps" / "segment" / "overlays", "views figure": out / "views.png",
             "eval results": eval_dir / "results.parquet", "report": report}
    for name, path in where.items():
        print(f"{name + ':':22s}{path}")
    return 0
