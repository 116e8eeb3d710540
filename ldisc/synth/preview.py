"""Pictures of synthetic samples with their masks and landmarks overlaid.

    python -m ldisc.synth.preview --out docs/img   # writes synth_fundus.png, synth_xray.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from . import SynthSample, generate

# Overlay colour of each mask (RGB); masks drawn later cover earlier ones.
MASK_COLOURS: dict[str, tuple[int, int, int]] = {
    "vessel": (40, 255, 40),
    "disc": (40, 120, 255),
    "cup": (0, 230, 255),
    "exudate": (255, 255, 0),
    "haemorrhage": (255, 0, 255),
    "lung": (40, 120, 255),
    "heart": (255, 60, 60),
    "clavicle": (40, 255, 40),
    "pneumothorax": (255, 200, 0),
}


def overlay(sample: SynthSample, opacity: float = 0.45) -> Image.Image:
    """The sample's image (as RGB) with every mask tinted in and landmarks as red crosses."""
    image = sample.image if sample.image.ndim == 3 else np.repeat(sample.image[..., None], 3, 2)
    tinted = image.astype(np.float32)
    for name, mask in sample.masks.items():
        colour = np.asarray(MASK_COLOURS.get(name, (255, 255, 255)), np.float32)
        tinted[mask] = (1 - opacity) * tinted[mask] + opacity * colour
    picture = Image.fromarray(tinted.astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    arm = max(3, sample.image.shape[0] // 80)
    for x, y in sample.landmarks.values():
        draw.line((x - arm, y, x + arm, y), fill=(255, 0, 0), width=2)
        draw.line((x, y - arm, x, y + arm), fill=(255, 0, 0), width=2)
    return picture


def side_by_side(sample: SynthSample) -> Image.Image:
    """The plain image beside its overlay, with a one-line legend of the mask colours."""
    plain = Image.fromarray(sample.image).convert("RGB")
    tinted = overlay(sample)
    width, height = plain.size
    legend_height = 18
    canvas = Image.new("RGB", (2 * width, height + legend_height), (255, 255, 255))
    canvas.paste(plain, (0, 0))
    canvas.paste(tinted, (width, 0))
    draw = ImageDraw.Draw(canvas)
    x = 4
    for name in sample.masks:
        draw.rectangle((x, height + 4, x + 10, height + 14), fill=MASK_COLOURS.get(name))
        draw.text((x + 14, height + 3), name, fill=(0, 0, 0))
        x += 18 + 7 * len(name)
    draw.text((x + 4, height + 3), "+ landmarks", fill=(200, 0, 0))
    return canvas


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write preview pictures of synthetic samples.")
    parser.add_argument("--out", type=Path, required=True, help="folder for synth_<modality>.png")
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--fundus-seed", type=int, default=4)
    parser.add_argument("--xray-seed", type=int, default=2)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    samples = {
        "fundus": generate("fundus", args.fundus_seed, args.size, lesions=True),
        "xray": generate("xray", args.xray_seed, args.size, pneumothorax=True),
    }
    for modality, sample in samples.items():
        path = args.out / f"synth_{modality}.png"
        side_by_side(sample).save(path, optimize=True)
        print(f"wrote {path} ({path.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
