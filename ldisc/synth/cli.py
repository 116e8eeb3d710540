"""``ldisc-synth``: write a folder of synthetic images with their masks and landmarks.

    ldisc-synth --modality fundus --n 100 --size 512 --seed 0 --out data/synth_fundus

Layout: DIR/images/<id>.png, DIR/masks/<mask>/<id>.png (0/255), DIR/landmarks.json
({id: {landmark: [x, y]}}), ids like ``fundus_000012``. Sample i is the same for any --n
and any --workers (it depends only on --seed and i).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ldisc.cli_args import add_version

from . import MASKS, MODALITIES, SITES, generate, sample_seed
from ._common import MAX_SIZE, MIN_SIZE


def sample_id(modality: str, index: int) -> str:
    """File id of sample ``index``: e.g. ``fundus_000012``."""
    return f"{modality}_{index:06d}"


def _bounded_int(low: int, high: int | None = None):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bounds = f">= {low}" if high is None else f"between {low} and {high}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = add_version(argparse.ArgumentParser(
        prog="ldisc-synth",
        description="Generate synthetic fundus photographs or chest X-rays with masks and landmarks.",
    ))
    parser.add_argument("--modality", required=True, choices=MODALITIES)
    parser.add_argument("--n", required=True, type=_bounded_int(1), help="number of images")
    parser.add_argument("--size", type=_bounded_int(MIN_SIZE, MAX_SIZE), default=512,
                        help="image side in pixels (default 512)")
    parser.add_argument("--seed", type=_bounded_int(0), default=0, help="stream seed (default 0)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--workers", type=_bounded_int(1), default=1,
                        help="worker processes (default 1)")
    parser.add_argument("--site", default=None,
                        help="acquisition look of every image (a name of ldisc.synth.SITES or its index; default: "
                             "random per image)")
    return parser


def write_sample(index: int, modality: str, size: int, seed: int, out: Path, site: int | None = None):
    """Generate sample ``index`` and write its image and masks; return (id, landmarks)."""
    sample = generate(modality, sample_seed(seed, index), size, site=site)
    name = sample_id(modality, index)
    Image.fromarray(sample.image).save(out / "images" / f"{name}.png")
    for mask_name, mask in sample.masks.items():
        Image.fromarray(mask.astype(np.uint8) * np.uint8(255)).save(
            out / "masks" / mask_name / f"{name}.png"
        )
    return name, {key: [x, y] for key, (x, y) in sample.landmarks.items()}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out: Path = args.out
    if out.exists() and not out.is_dir():
        print(f"ldisc-synth: error: --out {out} exists and is not a folder", file=sys.stderr)
        return 2
    try:
        (out / "images").mkdir(parents=True, exist_ok=True)
        for mask_name in MASKS[args.modality]:
            (out / "masks" / mask_name).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        print(f"ldisc-synth: error: --out {out}: cannot create folders there ({err.strerror})", file=sys.stderr)
        return 2

    names = SITES[args.modality]
    if args.site is not None and args.site not in names and not (args.site.isdigit() and int(args.site) < len(names)):
        print(f"ldisc-synth: error: --site {args.site!r}: one of {', '.join(names)} (or 0..{len(names) - 1})",
              file=sys.stderr)
        return 2
    site = None if args.site is None else (int(args.site) if args.site.isdigit() else names.index(args.site))
    work = partial(write_sample, modality=args.modality, size=args.size, seed=args.seed, out=out, site=site)
    started = time.perf_counter()
    landmarks: dict[str, dict[str, list[float]]] = {}
    progress = tqdm(total=args.n, unit="img", desc=f"ldisc-synth {args.modality}")
    if args.workers == 1:
        results = map(work, range(args.n))
        for name, points in results:
            landmarks[name] = points
            progress.update()
    else:
        with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
            for name, points in pool.imap(work, range(args.n), chunksize=4):
                landmarks[name] = points
                progress.update()
    progress.close()
    (out / "landmarks.json").write_text(json.dumps(landmarks, indent=1, sort_keys=True))
    seconds = time.perf_counter() - started
    print(f"ldisc-synth: wrote {args.n} {args.modality} images of {args.size}x{args.size} "
          f"to {out} in {seconds:.2f} s ({args.n / seconds:.1f} images/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
