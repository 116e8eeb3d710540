"""The LD network: encoder → U-Net decoder → embedding branch (+ clustering branch in stage 2)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ldisc.model.checkpointing import run_segment
from ldisc.model.decoder import ClusterHead, EmbeddingHead, UNetDecoder
from ldisc.model.encoder import VGGEncoder


FIRST_CONV = "blocks.0.0.0"   # the encoder's first convolution (its weight says the input channels)


@dataclass
class LDOutput:
    embedding: torch.Tensor            # (B, D, H, W), unit norm over D
    masks: torch.Tensor | None = None  # (B, K, H, W), sums to ~1 over K


class LDNet(nn.Module):
    """``in_channels``: 3 (fundus) or 1 (X-ray); ``decoder``: ``authors`` | ``ldisc`` (see
    :mod:`ldisc.model.decoder`); ``init``: ``kaiming`` | ``torch`` (see :mod:`ldisc.model.init`).
    Activation checkpointing: :func:`ldisc.model.checkpointing.set_activation_checkpointing`."""
    checkpoint_heads = False

    def __init__(self, width: str = "tiny", embed_dim: int = 32, clusters: int = 0, in_channels: int = 3,
                 decoder: str = "authors", init: str = "kaiming"):
        super().__init__()
        self.encoder = VGGEncoder(width, in_channels, init=init)
        self.decoder = UNetDecoder(self.encoder.channels, decoder, init)
        c = self.decoder.out_channels
        self.embed = EmbeddingHead(c, embed_dim, style=decoder, init=init)
        self.cluster = ClusterHead(c, clusters, style=decoder, init=init) if clusters > 0 else None

    def forward(self, x: torch.Tensor) -> LDOutput:
        h = self.decoder(self.encoder(x))
        on = self.checkpoint_heads
        return LDOutput(run_segment(self.embed, h, enabled=on),
                        run_segment(self.cluster, h, enabled=on) if self.cluster is not None else None)


def build_model(cfg, in_channels: int = 3, clusters: int | None = None) -> LDNet:
    """From the ``model`` config group (width, embed_dim, clusters, decoder, init); ``in_channels`` comes
    from the data modality (:func:`ldisc.views.input_normalization`)."""
    return LDNet(width=cfg.width, embed_dim=cfg.embed_dim, clusters=int(cfg.clusters if clusters is None else clusters),
                 in_channels=in_channels, decoder=str(cfg.get("decoder", "authors")),
                 init=str(cfg.get("init", "kaiming")))


def load_stage1(model: LDNet, state: dict[str, torch.Tensor]) -> list[str]:
    """Load stage-1 weights by parameter name; the clustering branch starts fresh.

    Returns the names left at their initial values. Anything else missing, or any unexpected or
    mis-shaped name, is an error: a stage-1 checkpoint must cover encoder, decoder and embedding.
    """
    own = model.state_dict()
    bad = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
    if bad:
        raise ValueError(f"stage-1 state does not fit this model: {bad[:5]} (+{max(0, len(bad) - 5)})")
    missing = [k for k in own if k not in state]
    if any(not k.startswith("cluster.") for k in missing):
        raise ValueError(f"stage-1 state lacks {[k for k in missing if not k.startswith('cluster.')][:5]}")
    model.load_state_dict(state, strict=False)
    return missing


def encoder_state(model: LDNet) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.encoder.state_dict().items()}


def load_encoder(path: str | Path, width: str | None = None) -> VGGEncoder:
    """Build a :class:`VGGEncoder` from an exported encoder file (``.pt`` or ``.safetensors``).

    The width is read from the file's metadata unless given; the input channels and the conv bias
    from the weights themselves (so files written before they were recorded load too).
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        from safetensors import safe_open
        state = load_file(str(path))
        with safe_open(str(path), "pt") as f:
            width = width or (f.metadata() or {}).get("width")
    else:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        state, width = blob["encoder"], width or blob.get("width")
    if width is None:
        raise ValueError(f"{path}: no encoder width recorded; pass width=")
    first = state[FIRST_CONV + ".weight"]
    enc = VGGEncoder(width, in_channels=int(first.shape[1]), bias=FIRST_CONV + ".bias" in state, init="torch")
    enc.load_state_dict(state)
    return enc


def save_encoder(model: LDNet, path: str | Path) -> Path:
    """Export the encoder alone: ``.pt`` (``{"encoder": state, "width": w, "in_channels": c}``) or
    ``.safetensors`` (the same two in its metadata)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = encoder_state(model)
    meta = {"width": model.encoder.width, "in_channels": model.encoder.in_channels}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata={k: str(v) for k, v in meta.items()})
    else:
        torch.save({"encoder": state, **meta}, path)
    return path
