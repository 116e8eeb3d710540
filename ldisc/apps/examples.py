"""One picture of each application from a checkpoint, for reports and demos.

    from ldisc.apps.examples import render_examples
    paths = render_examples("runs/sg/checkpoints/step_N", "out/")   # {"landmarks": …png, "mask": …png}

- ``landmarks.png``: a synthetic fundus template with its planted landmarks (left) and an unseen
  query image with the predicted landmarks (crosses) over the similarity heat-map (right), from
  :class:`ldisc.apps.landmarks.Localizer` at the checkpoint's view size.
- ``mask.png`` (only for a checkpoint with a clustering branch, i.e. stage 2): the image, the
  mask-0 probability, the read-out mask over the image and the generator's vessel mask.

Every panel is ``panel`` pixels square (at least 256).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw

from ldisc.apps.landmarks import LocalizeConfig, Localizer
from ldisc.apps.model_io import load_ld_model
from ldisc.apps.overlay import heat_overlay, mask_overlay
from ldisc.apps.segment import segment

TEMPLATE_SEED, QUERY_SEED = 1_000_001, 1_000_002     # fixed synthetic fundus images, never pretraining's


def _panels(images: list[Image.Image], titles: list[str], panel: int) -> Image.Image:
    out = Image.new("RGB", (panel * len(images), panel + 16), "white")
    draw = ImageDraw.Draw(out)
    for i, (im, title) in enumerate(zip(images, titles)):
        out.paste(im.convert("RGB").resize((panel, panel), Image.NEAREST), (i * panel, 16))
        draw.text((i * panel + 4, 2), title, fill=(0, 0, 0))
    return out


def render_examples(checkpoint: str | Path, out_dir: str | Path, segment_checkpoint: str | Path | None = None,
                    panel: int = 256, image_size: int = 256, mirror: bool = True,
                    threshold: float | str = "otsu") -> dict[str, Path]:
    """Write ``landmarks.png`` (from ``checkpoint``) and ``mask.png`` (from ``segment_checkpoint``, else
    ``checkpoint`` when it has a clustering branch) under ``out_dir``; return their paths."""
    from ldisc.synth import generate

    if panel < 256:
        raise ValueError(f"panel must be at least 256 px, got {panel}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    template, query = generate("fundus", TEMPLATE_SEED, image_size), generate("fundus", QUERY_SEED, image_size)
    loaded = load_ld_model(checkpoint)
    cfg = LocalizeConfig(size=loaded.train_size, mirror=mirror)
    pred = Localizer(loaded.net, template.image, template.landmarks, cfg).predict([query.image])[0]
    names = list(template.landmarks)
    marks = {n: (float(x), float(y)) for n, (x, y) in zip(names, pred.xy)}
    paths = {"landmarks": out / "landmarks.png"}
    _panels([heat_overlay(template.image, np.zeros((2, 2)), template.landmarks, alpha=0.0),
             heat_overlay(query.image, pred.heat.max(0).values.numpy(), marks)],
            ["template + landmarks", f"query: prediction over heat-map ({'mirror, ' if mirror else ''}"
                                     f"{cfg.size} px)"], panel).save(paths["landmarks"])
    seg = load_ld_model(segment_checkpoint) if segment_checkpoint else loaded
    if seg.net.cluster is not None:
        masks, probs = segment(seg.net, [query.image], "mask0", seg.train_size, threshold, seg.prototypes)
        p = probs[0] / max(float(probs[0].max()), 1e-8)
        heat = Image.fromarray((colormaps["viridis"](p)[..., :3] * 255).astype(np.uint8))
        truth = Image.fromarray(query.masks["vessel"].astype(np.uint8) * 255)
        paths["mask"] = out / "mask.png"
        _panels([Image.fromarray(query.image), heat, mask_overlay(query.image, masks[0]), truth],
                ["image", f"mask 0 (max {float(probs[0].max()):.2f})", f"mask0 readout ({threshold})",
                 "vessel truth"], panel).save(paths["mask"])
    return paths
