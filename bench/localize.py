"""Benchmark of the applications: one-shot localization speed at 512 px, the landmark MRE table
(center-sensitive vs flat kernel vs NCC, LD vs random init, the mirror and hypercolumn options),
shape-guided Dice vs no prior vs Frangi.

Prints one JSON object. Run:
    python bench/localize.py --landmark-ckpt fundus=RUN/checkpoints/step_N [--landmark-ckpt xray=…] \
        [--shape-guided CKPT --no-prior CKPT] [--n-test 32] [--seeds 0,1,2] [--size 128]

Checkpoints not given are skipped in the tables (``random`` and NCC are always measured). LD
networks work at their training view size (the tools' default); the random network and NCC at the
same working size (``--work-size``, default: the first landmark checkpoint's view size), NCC also at
the image size. Timing uses a random network (the cost does not depend on the weights) on the
accelerator when present.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from ldisc.apps.landmarks import LocalizeConfig, Localizer, ncc_localize
from ldisc.apps.model_io import load_ld_model, pick_device, random_ld_model
from ldisc.eval.apptasks import SEGMENT_METHODS, execute_app_run
from ldisc.eval.runs import RANDOM, RunSpec, resolve_checkpoint
from ldisc.synth import generate


def timing(size: int = 512, n_images: int = 2, repeats: int = 1) -> dict:
    """Seconds per image (embedding + all landmarks) and per extra landmark, at ``size`` px."""
    device = pick_device("auto")
    net = random_ld_model("tiny").to(device)
    template = generate("fundus", 1, size)
    images = [generate("fundus", 2 + i, size).image for i in range(n_images)]
    out = {"size": size, "device": str(device), "images": n_images, "threads": torch.get_num_threads()}
    for k in (1, 4):
        marks = {f"m{j}": template.landmarks["fovea" if j % 2 else "disc_center"] for j in range(k)}
        loc = Localizer(net, template.image, marks, LocalizeConfig(size=size, batch=n_images))
        loc.predict(images[:1])                                           # warm-up
        t0 = time.perf_counter()
        for _ in range(repeats):
            loc.predict(images)
        out[f"s_per_image_{k}_landmarks"] = (time.perf_counter() - t0) / (repeats * n_images)
    out["s_per_image_per_extra_landmark"] = (out["s_per_image_4_landmarks"] - out["s_per_image_1_landmarks"]) / 3
    t0 = time.perf_counter()
    ncc_localize(template.image, template.landmarks, images, size)
    out["ncc_s_per_image_2_landmarks"] = (time.perf_counter() - t0) / n_images
    return out


def app_rows(task: str, checkpoint: str, methods: tuple[str, ...], seeds: list[int], size: int, n_test: int,
             work_size: int = 0) -> dict:
    ref = resolve_checkpoint(checkpoint)
    table = {}
    data = {"input_side": size, "max_test": n_test, "work_size": work_size}
    for method in methods:
        rows = [execute_app_run(RunSpec(ref, task, method, s, {}, data))[0] for s in seeds]
        keys = ("mre_px", "mre_pct", "sr_2pct", "sr_4pct", "sr_8pct") if rows[0].get("mre_px") is not None else ("dice_mean",)
        table[method] = {k: round(float(np.mean([r[k] for r in rows])), 4) for k in keys}
        table[method]["seeds"] = len(rows)
    return table


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--landmark-ckpt", action="append", default=[], help="MODALITY=CKPT (fundus or xray)")
    p.add_argument("--shape-guided", default=None)
    p.add_argument("--no-prior", default=None)
    p.add_argument("--n-test", type=int, default=32)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--size", type=int, default=128, help="test image size (MRE in its pixels)")
    p.add_argument("--work-size", type=int, default=0, help="working size of random init and NCC (0: see above)")
    p.add_argument("--parts", default="timing,landmarks,segmentation", help="which measurements, comma-separated")
    a = p.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    result = {"load_average": os.getloadavg()[0]}
    parts = set(a.parts.split(","))
    if "timing" in parts:
        result["timing_512px"] = timing()
    ckpts = dict(entry.split("=", 1) for entry in a.landmark_ckpt)
    work = a.work_size or (load_ld_model(next(iter(ckpts.values()))).train_size if ckpts else a.size)
    result["landmarks"] = {"work_size": work} if "landmarks" in parts else {}
    methods = ("center", "flat", "mirror", "hypercolumn")
    for modality in ("fundus", "xray") if "landmarks" in parts else ():
        task = f"synth_{modality}_landmarks"
        table = result["landmarks"][task] = {"random": app_rows(task, RANDOM, methods, seeds, a.size, a.n_test, work)}
        table[f"ncc_{work}px"] = app_rows(task, RANDOM, ("ncc",), seeds, a.size, a.n_test, work)["ncc"]
        table[f"ncc_{a.size}px"] = app_rows(task, RANDOM, ("ncc",), seeds, a.size, a.n_test)["ncc"]
        if modality in ckpts:
            table["ld"] = app_rows(task, ckpts[modality], methods, seeds, a.size, a.n_test)
    if "segmentation" in parts:
        seg = {"frangi_otsu": app_rows("synth_fundus_vessel_unsup", RANDOM, ("frangi",), [0], a.size, a.n_test)["frangi"]}
        for name, ckpt in (("shape_guided", a.shape_guided), ("no_prior", a.no_prior)):
            if ckpt:
                seg[name] = app_rows("synth_fundus_vessel_unsup", ckpt, SEGMENT_METHODS, [0], a.size, a.n_test)
        result["vessel_segmentation_dice"] = seg
    print(json.dumps(result))


if __name__ == "__main__":
    main()
