"""Report sections beyond the Dice table, for the demo's one report: pictures of what LD learns (views,
embeddings, cluster masks), the pretraining loss curves, a landmark heat-map and a shape-guided mask example.

    fig = views_figure(checkpoint_dir, [img_a, img_b], out / "views.png")
    add_sections(report_html, [Section("Loss curves", [loss_png], "…"), …])   # before </body>, images inline

Pictures are PNG files; the HTML embeds them (data: URLs), so the report stays one self-contained file.
Every panel is drawn at least ``PANEL_PX`` pixels wide.
"""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

PANEL_PX = 256


@dataclass
class Section:
    title: str
    images: list[Path]
    text: str = ""
    captions: list[str] = field(default_factory=list)


def _panel(array: np.ndarray, px: int = PANEL_PX, nearest: bool = False) -> Image.Image:
    img = Image.fromarray(array)
    return img.resize((px, px), Image.NEAREST if nearest else Image.BILINEAR)


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """(C, H, W) normalised input → H×W×3 uint8 for display (per-image min-max)."""
    x = x.float()
    x = (x - x.min()) / (x.max() - x.min() + 1e-8)
    if x.shape[0] == 1:
        x = x.repeat(3, 1, 1)
    return (x.permute(1, 2, 0).numpy() * 255).astype(np.uint8)


def _pca_rgb(emb: torch.Tensor, basis: torch.Tensor | None = None) -> tuple[np.ndarray, torch.Tensor]:
    """(D, H, W) embedding → its first 3 principal components as RGB (basis shared across panels)."""
    d, h, w = emb.shape
    flat = emb.reshape(d, -1).T
    flat = flat - flat.mean(0)
    if basis is None:
        basis = torch.linalg.svd(flat, full_matrices=False).Vh[:3].T
    proj = flat @ basis
    proj = (proj - proj.min(0).values) / (proj.max(0).values - proj.min(0).values + 1e-8)
    return (proj.reshape(h, w, 3).numpy() * 255).astype(np.uint8), basis


def _mask_rgb(masks: torch.Tensor) -> np.ndarray:
    from matplotlib import colormaps

    k = masks.shape[0]
    hard = masks.argmax(0).numpy()
    return (colormaps["tab20"](hard % 20 / 19 if k > 1 else hard)[..., :3] * 255).astype(np.uint8)


@torch.no_grad()
def views_figure(checkpoint: str | Path, images: list[Path], out: Path, seed: int = 0) -> Path:
    """One row per LD input (the four augmented views and the mixup image of one image pair): the view,
    its per-pixel embedding (3 principal components as colours) and, for a stage-2 checkpoint, the hard
    cluster masks. → ``out`` (PNG)."""
    from ldisc.apps.model_io import load_ld_model
    from ldisc.views import VIEW_KEYS, ViewConfig, make_views

    loaded = load_ld_model(checkpoint)
    cfg = ViewConfig(view_side=loaded.train_size, modality=loaded.modality)
    pair = [Image.open(p).convert("RGB" if loaded.modality == "fundus" else "L") for p in images[:2]]
    views = make_views(pair[0], pair[1], cfg, torch.Generator().manual_seed(seed))
    batch = torch.stack([views[k] for k in VIEW_KEYS])
    result = loaded.net(batch)
    rows, basis = [], None
    for i in range(len(VIEW_KEYS)):
        emb, basis = _pca_rgb(result.embedding[i].float(), basis)
        panels = [_panel(_to_uint8(batch[i])), _panel(emb)]
        if result.masks is not None:
            panels.append(_panel(_mask_rgb(result.masks[i].float()), nearest=True))
        rows.append(np.concatenate([np.asarray(p) for p in panels], axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).save(out)
    return out


def _img_tag(path: Path, caption: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    width = max(PANEL_PX, Image.open(path).width)
    return (f'<figure style="display:inline-block;margin:6px"><img alt="{html.escape(caption)}" '
            f'style="width:{width}px;max-width:100%" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def sections_html(sections: list[Section]) -> str:
    parts = []
    for s in sections:
        images = [p for p in s.images if Path(p).is_file()]
        captions = s.captions or [Path(p).name for p in images]
        parts.append(f"<h2>{html.escape(s.title)}</h2>" + (f"<p>{html.escape(s.text)}</p>" if s.text else "")
                     + "".join(_img_tag(p, c) for p, c in zip(images, captions)))
    return "\n".join(parts)


def add_sections(report_html: Path, sections: list[Section]) -> Path:
    """Insert ``sections`` into an existing HTML report, before ``</body>`` (appended if there is none)."""
    text = report_html.read_text()
    extra = sections_html(sections)
    at = text.rfind("</body>")
    report_html.write_text(text[:at] + extra + "\n" + text[at:] if at >= 0 else text + extra)
    return report_html
