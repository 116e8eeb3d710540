"""The full LD network of a checkpoint, and images prepared for it, for the application tools.

A checkpoint directory written by ``ldisc-pretrain`` holds ``model.pt`` (every weight of the
network of the stage it was saved in) and ``trainer.pt`` (the run's config and the objective's
state, including the region prototypes when ``objective.prototype_momentum > 0``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image

from ldisc.model import LDNet
from ldisc.train.checkpoint import MODEL_FILE, TRAINER_FILE
from ldisc.views import normalize

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


@dataclass
class LoadedModel:
    net: LDNet
    modality: str                       # "fundus" or "xray" (from the run's data config)
    train_size: int                     # view size it was trained at
    prototypes: torch.Tensor | None     # (K, D) stored region centres, if the run kept them
    path: Path


def checkpoint_files(checkpoint: str | Path) -> tuple[Path, Path | None]:
    """(model.pt, trainer.pt or None) of a checkpoint dir, or of a ``model.pt`` path."""
    path = Path(checkpoint)
    model = path / MODEL_FILE if path.is_dir() else path
    if not model.is_file():
        raise FileNotFoundError(f"{checkpoint}: no {MODEL_FILE} (not an ldisc checkpoint directory)")
    trainer = model.parent / TRAINER_FILE
    return model, trainer if trainer.is_file() else None


def load_ld_model(checkpoint: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """The checkpoint's LD network in eval mode on ``device`` (clustering branch if it has one)."""
    model_path, trainer_path = checkpoint_files(checkpoint)
    state = torch.load(model_path, map_location="cpu", weights_only=True)
    cfg, prototypes = None, None
    if trainer_path is not None:
        trainer = torch.load(trainer_path, map_location="cpu", weights_only=False)
        cfg = OmegaConf.create(trainer["config"])
        protos = (trainer.get("objective") or {}).get("prototypes")
        prototypes = protos if protos is not None and protos.numel() else None
    width = cfg.model.width if cfg is not None else _width_from_state(state)
    embed_dim = int(cfg.model.embed_dim) if cfg is not None else 32
    clusters = int(cfg.model.clusters) if cfg is not None and any(k.startswith("cluster.") for k in state) else 0
    first_conv = next(v for k, v in state.items() if k.startswith("encoder.") and v.ndim == 4)
    decoder = {"decoder": str(cfg.model.decoder)} if cfg is not None and "decoder" in cfg.model else {}
    net = LDNet(width, embed_dim, clusters, in_channels=int(first_conv.shape[1]), **decoder)   # X-ray: 1 channel
    net.load_state_dict(state)
    modality = str(cfg.data.get("modality", "fundus")) if cfg is not None else "fundus"
    size = int(cfg.data.get("view_side", cfg.data.get("size", 256))) if cfg is not None else 256   # size: before the rename
    return LoadedModel(net.to(device).eval(), modality, size, prototypes, model_path.parent)


def random_ld_model(width: str = "tiny", clusters: int = 0, seed: int = 0) -> LDNet:
    """An LD network at its random (Kaiming) init: the "random init" reference of the evaluations."""
    torch.manual_seed(seed)
    return LDNet(width, 32, clusters).eval()


def _width_from_state(state: dict) -> str:
    first = next(v for k, v in state.items() if k.startswith("encoder.") and v.ndim == 4)
    return {16: "tiny", 32: "small", 64: "full"}[int(first.shape[0])]


def list_images(inputs: list[str]) -> list[Path]:
    """Image files from a list of files and folders (folders: their image files, sorted)."""
    out: list[Path] = []
    for entry in inputs:
        p = Path(entry)
        if p.is_dir():
            out += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"{entry}: no such image file or folder")
    if not out:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(inputs)}")
    return out


def read_rgb(path: str | Path) -> np.ndarray:
    """uint8 H×W×3 (grey images are repeated over the channels)."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable image ({err})") from err


def to_input(rgb: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """uint8 H×W×3 (or float (3, H, W) in [0, 1]) → (1, 3, size, size) network input (ImageNet-normalised)."""
    x = torch.from_numpy(np.array(rgb)) if isinstance(rgb, np.ndarray) else rgb
    if x.dtype == torch.uint8:
        x = x.permute(2, 0, 1).float() / 255.0
    x = F.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return normalize(x)


@torch.no_grad()
def embed(net: LDNet, x: torch.Tensor, batch: int = 8) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(N, 3, S, S) inputs → unit embeddings (N, D, S, S) and cluster masks (N, K, S, S) or None."""
    device = next(net.parameters()).device
    embs, masks = [], []
    for chunk in x.split(batch):
        out = net(chunk.to(device))
        embs.append(out.embedding.float())
        if out.masks is not None:
            masks.append(out.masks.float())
    return torch.cat(embs), (torch.cat(masks) if masks else None)


FEATURES = ("embedding", "hypercolumn")


@torch.no_grad()
def feature_maps(net: LDNet, x: torch.Tensor, features: str = "embedding", batch: int = 8) -> dict[str, torch.Tensor]:
    """(N, 3, S, S) inputs → named feature maps of one forward pass, each (N, C, h, w) at its own stride.

    ``embedding``: ``{"embedding"}``, the unit LD pixel embedding (the paper's). ``hypercolumn``: also
    every encoder level (``enc0`` … at strides 1, 2, 4, …) and every decoder stage (``dec0`` …, deepest
    first), read with forward hooks, so a pixel is described at every scale the network sees.
    """
    if features not in FEATURES:
        raise ValueError(f"features must be one of {FEATURES}, got {features!r}")
    device = next(net.parameters()).device
    parts: dict[str, list[torch.Tensor]] = {}
    grabbed: dict[str, torch.Tensor] = {}
    hooks = []
    if features == "hypercolumn":
        hooks.append(net.encoder.register_forward_hook(
            lambda m, i, out: grabbed.update({f"enc{j}": f for j, f in enumerate(out)})))
        for j, up in enumerate(net.decoder.ups):
            hooks.append(up.register_forward_hook(lambda m, i, out, j=j: grabbed.update({f"dec{j}": out})))
    try:
        for chunk in x.split(batch):
            grabbed["embedding"] = net(chunk.to(device)).embedding
            for name, value in grabbed.items():
                parts.setdefault(name, []).append(value.float())
    finally:
        for h in hooks:
            h.remove()
    return {name: torch.cat(v) for name, v in parts.items()}


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: the accelerator when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@torch.no_grad()
def recalibrate_bn(net: LDNet, x: torch.Tensor) -> LDNet:
    """Set every BatchNorm's running statistics to those of the inputs ``x`` (cumulative average), then
    back to eval mode. For the random-init reference: its untouched running statistics (mean 0, var 1)
    would collapse the embeddings to one direction, which says nothing about the architecture."""
    bns = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    net.train()
    device = next(net.parameters()).device
    for chunk in x.split(8):
        net(chunk.to(device))
    return net.eval()


def image_batches(files: list[Path], batch: int, skipped: dict[str, str], desc: str):
    """(files, RGB arrays) of up to ``batch`` readable images at a time, with a progress bar; an unreadable
    file is a counted skip (``skipped[path] = reason``), so one bad file does not stop thousands."""
    from tqdm import tqdm

    for start in tqdm(range(0, len(files), batch), desc=desc, unit="batch", dynamic_ncols=True):
        chunk, images = [], []
        for f in files[start:start + batch]:
            try:
                images.append(read_rgb(f))
                chunk.append(f)
            except ValueError as err:
                skipped[str(f)] = str(err)
        if images:
            yield chunk, images
