"""``ldisc-localize``: one-shot landmark localization from one annotated template.

    ldisc-localize --checkpoint RUN/checkpoints/step_N --template T.png --landmarks T.json \
                   --images DIR_OR_FILES… --out DIR [--size 0] [--pooling center|mean] [--levels 2] \
                   [--mirror] [--features embedding|hypercolumn]

``T.json`` maps landmark names to (x, y) pixels of the template: ``{"fovea": [301, 250], …}`` (or
``{"fovea": {"x": 301, "y": 250}}``). Writes ``DIR/landmarks.json`` (x, y and cosine score per
landmark and image, in each image's pixels) and ``DIR/overlays/<image>.png`` (predictions over the
coarse similarity heat-map, the maximum over landmarks). ``--size 0`` (default) works at the view
size the checkpoint was trained at: the features, and the patch-grid kernel, are learnt at that
scale. Runs on the accelerator when present.
Exit status 0, or 2 with a one-line error on bad input.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


from ldisc.apps.landmarks import LocalizeConfig, Localizer
from ldisc.apps.model_io import FEATURES, image_batches, list_images, load_ld_model, pick_device, read_rgb
from ldisc.apps.overlay import heat_overlay
from ldisc.cli_args import add_version
from ldisc.cli_errors import USAGE_EXIT, run_or_report


def read_landmarks(path: str | Path) -> dict[str, tuple[float, float]]:
    """``{name: [x, y]}`` or ``{name: {"x": x, "y": y}}`` → ``{name: (x, y)}``."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable landmarks JSON ({err})") from err
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"{path}: expected an object {{name: [x, y]}}")
    out = {}
    for name, v in raw.items():
        xy = (v.get("x"), v.get("y")) if isinstance(v, dict) else v
        if not isinstance(xy, (list, tuple)) or len(xy) != 2 or not all(isinstance(c, (int, float)) for c in xy):
            raise ValueError(f"{path}: landmark {name!r} is not [x, y]")
        out[str(name)] = (float(xy[0]), float(xy[1]))
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = add_version(argparse.ArgumentParser(prog="ldisc-localize", description=__doc__.split("\n\n")[0]))
    p.add_argument("--checkpoint", required=True, help="checkpoint dir (model.pt) of ldisc-pretrain")
    p.add_argument("--template", required=True, help="the annotated template image")
    p.add_argument("--landmarks", required=True, help="JSON {name: [x, y]} in template pixels")
    p.add_argument("--images", required=True, nargs="+", help="query images or folders of images")
    p.add_argument("--out", required=True, help="output folder")
    d = LocalizeConfig()
    p.add_argument("--size", type=int, default=0, help="working resolution (px; 0: the checkpoint's view size)")
    p.add_argument("--grid", type=int, default=d.grid, help="patch grid of pretraining (kernel = size/grid)")
    p.add_argument("--sigma", type=float, default=d.sigma, help="center-sensitive sigma (units of the kernel side)")
    p.add_argument("--pooling", choices=("center", "mean"), default=d.pooling)
    p.add_argument("--levels", type=int, default=d.levels, help="coarse-to-fine levels")
    p.add_argument("--batch", type=int, default=d.batch, help="images per forward pass")
    p.add_argument("--mirror", action="store_true", help="also score each query's mirror image (left/right eyes)")
    p.add_argument("--features", choices=FEATURES, default=d.features,
                   help="embedding (the paper's) | hypercolumn (+ every encoder/decoder map)")
    p.add_argument("--device", default="auto", help="auto (accelerator when present) | cpu | cuda")
    p.add_argument("--no-overlays", action="store_true")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> Path:
    if (args.size and args.size < 16) or args.levels < 1 or args.batch < 1 or not args.sigma > 0:
        raise ValueError("need --size 0 or >= 16, --levels >= 1, --batch >= 1 and --sigma > 0")
    landmarks = read_landmarks(args.landmarks)
    files = list_images(args.images)
    loaded = load_ld_model(args.checkpoint, pick_device(args.device))
    cfg = LocalizeConfig(args.size or loaded.train_size, args.grid, args.sigma, args.pooling, args.levels, args.batch,
                         args.features, args.mirror)
    localizer = Localizer(loaded.net, read_rgb(args.template), landmarks, cfg)
    out = Path(args.out)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    skipped: dict[str, str] = {}
    for chunk, images in image_batches(files, cfg.batch, skipped, "ldisc-localize"):
        for f, im, pred in zip(chunk, images, localizer.predict(images)):
            points = {n: (float(x), float(y)) for n, (x, y) in zip(localizer.names, pred.xy)}
            results[f.name] = {n: {"x": round(points[n][0], 2), "y": round(points[n][1], 2),
                                   "score": round(float(s), 4)} for n, s in zip(localizer.names, pred.score)}
            if not args.no_overlays:
                heat_overlay(im, pred.heat.max(0).values.numpy(), points).save(out / "overlays" / f"{f.stem}.png")
    report = {"checkpoint": str(loaded.path), "template": str(args.template), "landmarks": landmarks,
              "config": vars(cfg), "images": results, "skipped": skipped}
    (out / "landmarks.json").write_text(json.dumps(report, indent=1))
    return out / "landmarks.json"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    path = run_or_report("ldisc-localize", run, args)
    if path is None:
        return USAGE_EXIT
    n = len(json.loads(path.read_text())["images"])
    print(f"ldisc-localize: {n} images → {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
