"""Cluster diagnostics during stage 2: a fixed probe batch, its statistics and its pictures.

Every ``train.cluster_image_every`` stage-2 steps (0: only at the end) and at the end of stage 2 the
:class:`ClusterProbe` runs the model (eval mode, no gradient) on a fixed batch and

- appends ``{"step", "crispness", "effective_count", "area_share", "dice", ...}`` to
  ``<run_dir>/clusters.jsonl`` (rank 0),
- writes ``<run_dir>/clusters/step_<step>.png``: per image a row of the image, the argmax map in a
  fixed palette and the K soft masks,
- sets the ``ldisc_cluster_*`` gauges of :class:`~ldisc.train.metrics.TrainMetrics`.

With ``data.source=synthetic`` the probe batch is held-out synthetic images (a seed the training
pool never uses) with their true anatomy masks, so the record carries the best-match Dice of each
structure. Any other source: the first stage-2 batch's x1_1 views, statistics and pictures only.
Every rank runs the probe's forward pass (ZeRO-3 gathers parameters collectively); rank 0 writes.
"""
from __future__ import annotations

import colorsys
import json
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ldisc.config_schema import GeneratedDataConfig, ShardDataConfig, TrainConfig
from ldisc.objectives.crisp import sharpen
from ldisc.objectives.diagnostics import ClusterStats, cluster_stats
from ldisc.views import input_normalization, normalize, pil_to_tensor, to_channels

HELD_OUT_SEED = 1_000_003      # offset from data.seed: never one of the training pool's seeds


def palette(k: int) -> np.ndarray:
    """K fixed, well separated RGB colours (uint8, (K, 3)): golden-ratio hues, alternating lightness."""
    cols = [colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.75, 1.0 if i % 2 == 0 else 0.7) for i in range(k)]
    return (np.array(cols) * 255).round().astype(np.uint8)


def cluster_picture(images: torch.Tensor, masks: torch.Tensor) -> Image.Image:
    """Rows: one per image; columns: the image, the argmax map, then the K soft masks (white = 1).

    ``images`` (B, 3 or 1, H, W) in [0, 1]; ``masks`` (B, K, H, W). The picture is (B·H) × ((K + 2)·W).
    """
    b, k, h, w = masks.shape
    images = to_channels(images, 3)                # X-ray probes are 1-channel
    img = (images.detach().float().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    img = np.repeat(img, 3, axis=3) if img.shape[3] == 1 else img                      # X-ray: gray → RGB
    hard = palette(k)[masks.argmax(1).cpu().numpy()]                                   # (B, H, W, 3)
    soft = (masks.detach().float().clamp(0, 1) * 255).round().byte().cpu().numpy()      # (B, K, H, W)
    soft = np.repeat(soft.transpose(0, 2, 1, 3).reshape(b, h, k * w)[..., None], 3, axis=3)
    rows = np.concatenate([img, hard, soft], axis=2)                                    # (B, H, (K+2)W, 3)
    return Image.fromarray(rows.reshape(b * h, (k + 2) * w, 3))


def write_cluster_picture(images: torch.Tensor, masks: torch.Tensor, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cluster_picture(images, masks).save(path)
    return path


def synthetic_probe_batch(modality: str, size: int, n: int, seed: int) -> tuple[torch.Tensor, dict]:
    """``n`` held-out synthetic images (B, 3, size, size) in [0, 1] and their true masks (B, H, W)."""
    from ldisc import synth

    samples = list(synth.generate_many(modality, n, size=size, seed=seed + HELD_OUT_SEED))
    images = torch.stack([pil_to_tensor(synth.to_pil(s)) for s in samples])
    truth = {name: torch.from_numpy(np.stack([s.masks[name] for s in samples])) for name in synth.MASKS[modality]}
    return images, truth


def model_masks(module: torch.nn.Module, images: torch.Tensor, power: float = 1.0,
                modality: str = "fundus") -> torch.Tensor:
    """The cluster masks the objective sees (after ``objective.mask_power``), in eval mode; ``images`` in
    [0, 1], normalised as the network input of ``modality`` (:func:`ldisc.views.input_normalization`)."""
    param = next(module.parameters())
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            x = to_channels(images.to(param.device, param.dtype), input_normalization(modality)[0])
            out = module(normalize(x, modality))
    finally:
        module.train(was_training)
    if out.masks is None:
        raise ValueError("the model has no clustering branch (model.clusters = 0)")
    return sharpen(out.masks.float(), power)


def anatomy_alignment(module: torch.nn.Module, modality: str, size: int = 128, n: int = 8,
                      seed: int = 0, power: float = 1.0) -> ClusterStats:
    """Cluster statistics and best-match Dice of a stage-2 model on held-out synthetic images
    (callable from an eval report: ``anatomy_alignment(model, "fundus").as_record()``)."""
    images, truth = synthetic_probe_batch(modality, size, n, seed)
    return cluster_stats(model_masks(module, images, power, modality), truth)


class ClusterProbe:
    def __init__(self, train: TrainConfig, data: GeneratedDataConfig | ShardDataConfig, mask_power: float,
                 seed: int, run_dir: Path, rank: int):
        self.every, self.power, self.modality = train.cluster_image_every, mask_power, data.modality
        self.rank, self.dir = rank, Path(run_dir)
        self.images, self.truth = None, None
        if data.source == "synthetic":
            self.images, self.truth = synthetic_probe_batch(data.modality, data.view_side, train.cluster_probe_images,
                                                            seed)

    def remember(self, batch: dict) -> None:
        """Without synthetic ground truth: the first batch's x1_1 views become the probe batch."""
        if self.images is None:
            _, mean, std = input_normalization(self.modality)
            c = len(mean)
            mean, std = torch.tensor(mean).view(1, c, 1, 1), torch.tensor(std).view(1, c, 1, 1)
            self.images = (batch["x1_1"].detach().float().cpu() * std + mean).clamp(0, 1)

    def due(self, step: int, final: bool) -> bool:
        return self.images is not None and (final or (self.every > 0 and step % self.every == 0))

    def run(self, module: torch.nn.Module, step: int) -> ClusterStats:
        masks = model_masks(module, self.images, self.power, self.modality).cpu()
        stats = cluster_stats(masks, self.truth)
        if self.rank == 0:
            write_cluster_picture(self.images, masks, self.dir / "clusters" / f"step_{step:07d}.png")
        return stats


def run_dir_of(checkpoint: str | Path) -> Path | None:
    """The pretraining run dir above a checkpoint dir or encoder file (the one holding clusters.jsonl)."""
    path = Path(checkpoint).expanduser().resolve()
    for parent in [path, *path.parents][:4]:
        if (parent / "clusters.jsonl").is_file():
            return parent
    return None


def cluster_section(checkpoints: dict[str, str], out: Path) -> list[str]:
    """Markdown lines for an eval report: per checkpoint label → spec, the last cluster record of its
    pretraining run (crispness, effective count, best-match Dice) and its picture; [] if none has one."""
    rows, pictures = [], []
    for label, spec in sorted(checkpoints.items()):
        run = run_dir_of(spec) if spec and spec != "random" else None
        if run is None:
            continue
        rec = [json.loads(x) for x in (run / "clusters.jsonl").read_text().splitlines() if x.strip()][-1]
        dice = ", ".join(f"{k} {v:.2f}" for k, v in rec.get("dice", {}).items()) or "—"
        rows.append(f"| {label} | {rec['step']} | {rec['crispness']:.3f} | {rec['effective_count']:.1f} "
                    f"/ {len(rec['area_share'])} | {dice} |")
        png = run / "clusters" / f"step_{rec['step']:07d}.png"
        if png.is_file():   # a copy inside the report folder, so the report travels alone
            copy = out / "clusters" / (re.sub(r"[^A-Za-z0-9_.-]", "_", label) + ".png")
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(png, copy)
            pictures.append(f"![clusters of {label}]({copy.relative_to(out).as_posix()})")
    if not rows:
        return []
    return ["", "## Region clusters of the pretraining runs (held-out synthetic probe, last record)", "",
            "| checkpoint | step | crispness | effective count | best-match Dice |", "| --- | --- | --- | --- | --- |",
            *rows, "", *pictures, ""]
