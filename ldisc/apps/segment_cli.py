"""``ldisc-segment``: vessel (or any cluster-0) masks from a shape-guided stage-2 checkpoint.

    ldisc-segment --checkpoint RUN/checkpoints/step_N --images DIR_OR_FILES… --out DIR \
                  [--readout mask0|prototype] [--size 256] [--threshold 0.5|otsu]

Writes ``DIR/masks/<image>.png`` (0/255, at the input image's size), ``DIR/overlays/<image>.png``
(mask painted over the image) and ``DIR/segment.json`` (settings, foreground fraction per image).
Runs on the accelerator when present. Exit status 0, or 2 with a one-line error on bad input.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from ldisc.apps.model_io import image_batches, list_images, load_ld_model, pick_device
from ldisc.apps.overlay import mask_overlay
from ldisc.cli_args import add_version
from ldisc.cli_errors import USAGE_EXIT, run_or_report
from ldisc.apps.segment import READOUTS, parse_threshold, segment


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = add_version(argparse.ArgumentParser(prog="ldisc-segment", description=__doc__.split("\n\n")[0]))
    p.add_argument("--checkpoint", required=True, help="stage-2 checkpoint dir (model.pt) of ldisc-pretrain")
    p.add_argument("--images", required=True, nargs="+", help="images or folders of images")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--readout", choices=READOUTS, default="mask0")
    p.add_argument("--size", type=int, default=0, help="working resolution (0: the checkpoint's view size)")
    p.add_argument("--threshold", default="0.5",
                   help="a number in (0, 1), or otsu: per image, Otsu's threshold inside the field of view")
    p.add_argument("--modality", choices=("auto", "fundus", "xray"), default="auto",
                   help="fundus restricts masks to the field of view (auto: the checkpoint's modality)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", default="auto", help="auto (accelerator when present) | cpu | cuda")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> Path:
    if args.batch < 1 or (args.size and args.size < 16):
        raise ValueError("need --batch >= 1 and --size 0 or >= 16")
    try:
        threshold = parse_threshold(args.threshold)
    except ValueError:
        raise ValueError(f"--threshold must be a number in (0, 1) or otsu, got {args.threshold!r}") from None
    files = list_images(args.images)
    loaded = load_ld_model(args.checkpoint, pick_device(args.device))
    size = args.size or loaded.train_size
    modality = loaded.modality if args.modality == "auto" else args.modality
    out = Path(args.out)
    for sub in ("masks", "overlays"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    fractions, skipped = {}, {}
    for chunk, images in image_batches(files, args.batch, skipped, "ldisc-segment"):
        masks, _ = segment(loaded.net, images, args.readout, size, threshold, loaded.prototypes, modality,
                           args.batch)
        for f, im, m in zip(chunk, images, masks):
            Image.fromarray(m.astype(np.uint8) * 255).save(out / "masks" / f"{f.stem}.png")
            mask_overlay(im, m).save(out / "overlays" / f"{f.stem}.png")
            fractions[f.name] = round(float(m.mean()), 5)
    report = {"checkpoint": str(loaded.path), "readout": args.readout, "size": size, "threshold": threshold,
              "modality": modality, "stored_prototypes": loaded.prototypes is not None,
              "foreground_fraction": fractions, "skipped": skipped}
    (out / "segment.json").write_text(json.dumps(report, indent=1))
    return out / "segment.json"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    path = run_or_report("ldisc-segment", run, args)
    if path is None:
        return USAGE_EXIT
    n = len(json.loads(path.read_text())["foreground_fraction"])
    print(f"ldisc-segment: {n} masks → {path.parent / 'masks'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
